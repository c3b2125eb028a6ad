//! Tiny T5 and CLIP tokenizers for the out-of-the-box demo (`mgpu make-tiny`), built in code
//! with the same builders as the real ones ([`super::build`]), so the demo exercises the real
//! pipelines (Metaspace + Unigram with sentinels; CLIP normalizer, split regex, byte-level BPE,
//! BOS/EOS) with vocabularies of a few hundred tokens.
//!
//! Their vocabulary sizes are what [`crate::models::t5::Config::tiny`] and
//! [`crate::models::clip::Config::tiny`] are sized for ([`T5_VOCAB`], [`CLIP_VOCAB`]); a test
//! checks that they agree. `tokenizer.json` text for a demo folder comes from
//! [`t5_json`] / [`clip_json`].

use std::collections::HashMap;

use tokenizers::Tokenizer;

use super::build;

/// Words of FLUX-style prompts that the tiny vocabularies know whole.
const WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "at",
    "photo",
    "painting",
    "portrait",
    "cat",
    "dog",
    "fox",
    "horse",
    "house",
    "tree",
    "sky",
    "sea",
    "city",
    "street",
    "night",
    "sunset",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "old",
    "small",
    "art",
    "digital",
    "style",
    "light",
    "mountain",
    "snow",
    "rain",
    "chair",
    "table",
    "astronaut",
    "moon",
    "riding",
];
/// Sub-word pieces (T5 only) so that unknown words split into something shorter than letters.
const SUFFIXES: &[&str] = &["ing", "ed", "er", "s", "es", "ly", "tion"];
/// Sentinels appended after the pieces, as T5's 100 `<extra_id_N>` (a few here).
pub const T5_EXTRA_IDS: usize = 4;
/// Token count of [`t5`]'s vocabulary (pieces + sentinels).
pub const T5_TOKENS: usize = 4 + 26 + 10 + 21 + 43 + 7 + T5_EXTRA_IDS;
/// Rows of the tiny T5 embedding: the token count rounded up to a multiple of 8, as T5-XXL's
/// 32100 tokens get 32128 rows.
pub const T5_VOCAB: usize = T5_TOKENS.div_ceil(8) * 8;
/// Token count of [`umt5`]'s vocabulary: umT5's four specials, 256 byte pieces, `▁`, the same
/// words, suffixes and characters as [`t5`], and [`T5_EXTRA_IDS`] sentinels.
pub const UMT5_TOKENS: usize = 5 + 256 + 26 + 10 + 21 + 43 + 7 + T5_EXTRA_IDS;
/// Rows of the tiny umT5 embedding: rounded up to a multiple of 128, as umT5-XXL's 256300
/// tokens get 256384 rows.
pub const UMT5_VOCAB: usize = UMT5_TOKENS.div_ceil(128) * 128;
/// Token count of [`clip`]'s vocabulary: 2 × 256 byte symbols, one token per merge, 2 markers.
pub const CLIP_VOCAB: usize = 512 + CLIP_MERGES + 2;
const CLIP_MERGES: usize = 130;
const PUNCT: &str = ",.!?'-:;()\"/&+*#%@=_[]";

/// The tiny T5 Unigram tokenizer.
pub fn t5() -> Result<Tokenizer, String> {
    let mut pieces: Vec<(String, f64)> = vec![
        (build::T5_PAD.into(), 0.0),
        (build::T5_EOS.into(), 0.0),
        (build::T5_UNK.into(), 0.0),
    ];
    pieces.extend(t5_pieces());
    build::t5_unigram(pieces, 2, &[], T5_EXTRA_IDS)
}

/// The ordinary pieces of the tiny T5 vocabularies: `▁`, whole words, suffixes, characters.
fn t5_pieces() -> Vec<(String, f64)> {
    let mut pieces: Vec<(String, f64)> = vec![("▁".into(), -2.0)];
    for (i, w) in WORDS.iter().enumerate() {
        pieces.push((format!("▁{w}"), -4.0 - 0.05 * i as f64));
    }
    for (i, s) in SUFFIXES.iter().enumerate() {
        pieces.push(((*s).into(), -6.0 - 0.05 * i as f64));
    }
    let chars = ('a'..='z').chain('0'..='9').chain(PUNCT.chars().take(21));
    for (i, c) in chars.enumerate() {
        pieces.push((c.to_string(), -8.0 - 0.01 * i as f64));
    }
    pieces
}

/// The tiny umT5 tokenizer, in umT5's layout: `<pad> </s> <s> <unk>` (unk id 3), the 256
/// byte-fallback pieces `<0x00>`…`<0xFF>`, then the same pieces as [`t5`] and a few sentinels;
/// byte fallback on, so characters outside the vocabulary become their UTF-8 bytes.
pub fn umt5() -> Result<Tokenizer, String> {
    let mut pieces: Vec<(String, f64)> = vec![
        (build::T5_PAD.into(), 0.0),
        (build::T5_EOS.into(), 0.0),
        (build::SPM_BOS.into(), 0.0),
        (build::T5_UNK.into(), 0.0),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0)));
    pieces.extend(t5_pieces());
    build::t5_unigram_with(pieces, 3, &[], T5_EXTRA_IDS, true)
}

/// [`umt5`] as `tokenizer.json` text.
pub fn umt5_json() -> Result<String, String> {
    umt5()?.to_string(true).map_err(|e| e.to_string())
}

/// GPT-2/CLIP's reversible byte → printable character table, in CLIP's vocabulary order.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut out: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .map(|b| char::from_u32(b).expect("latin-1"))
        .collect();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable(b) {
            out.push(char::from_u32(256 + n).expect("valid code point"));
            n += 1;
        }
    }
    out
}

/// Applies `merges` (in rank order) to `symbols`, as byte-level BPE does.
fn bpe(mut symbols: Vec<String>, rank: &HashMap<(String, String), usize>) -> Vec<String> {
    loop {
        let best = (0..symbols.len().saturating_sub(1))
            .filter_map(|i| {
                rank.get(&(symbols[i].clone(), symbols[i + 1].clone()))
                    .map(|&r| (r, i))
            })
            .min();
        let Some((_, i)) = best else { return symbols };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
}

/// The tiny CLIP vocabulary and merges: each word of `WORDS` becomes one `word</w>` token by
/// adding, while BPE (with the merges so far) still leaves it in pieces, a merge of its first
/// two pieces; so the merges are valid BPE by construction.
pub fn clip_vocab() -> (HashMap<String, u32>, Vec<(String, String)>) {
    let base = byte_symbols();
    let mut tokens: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    tokens.extend(base.iter().map(|c| format!("{c}</w>")));
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut rank: HashMap<(String, String), usize> = HashMap::new();
    for w in WORDS {
        let chars: Vec<char> = w.chars().collect();
        let last = chars.len() - 1;
        let symbols: Vec<String> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    format!("{c}</w>")
                } else {
                    c.to_string()
                }
            })
            .collect();
        loop {
            let seg = bpe(symbols.clone(), &rank);
            if seg.len() == 1 {
                break;
            }
            let pair = (seg[0].clone(), seg[1].clone());
            rank.insert(pair.clone(), merges.len());
            tokens.push(format!("{}{}", pair.0, pair.1));
            merges.push(pair);
        }
    }
    tokens.push(build::CLIP_BOS.into());
    tokens.push(build::CLIP_EOS.into());
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    (vocab, merges)
}

/// The tiny CLIP byte-level BPE tokenizer.
pub fn clip() -> Result<Tokenizer, String> {
    let (vocab, merges) = clip_vocab();
    build::clip_bpe(vocab, merges)
}

/// [`t5`] as `tokenizer.json` text (for the demo's `t5-tokenizer.json`).
pub fn t5_json() -> Result<String, String> {
    t5()?.to_string(true).map_err(|e| e.to_string())
}

/// [`clip`] as `tokenizer.json` text (for the demo's `clip-tokenizer.json`).
pub fn clip_json() -> Result<String, String> {
    clip()?.to_string(true).map_err(|e| e.to_string())
}
