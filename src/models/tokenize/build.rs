//! Building T5 and CLIP tokenizers from their original files, the way transformers does.
//!
//! Real FLUX folders do not always carry a `tokenizer.json`: FLUX's `tokenizer/` (CLIP) has only
//! `vocab.json` + `merges.txt`, and a T5 folder may have only `spiece.model`. transformers then
//! builds the tokenizer in code (`CLIPTokenizer.__init__`, `T5Tokenizer.__init__`, 5.24); these
//! functions build the same pipeline with the `tokenizers` crate, piece for piece:
//!
//! - T5: Unigram over the SentencePiece pieces followed by `extra_ids` sentinels
//!   `<extra_id_{n-1}> … <extra_id_0>` (score 0); normalizer `Precompiled(charsmap)`;
//!   pre-tokenizer `WhitespaceSplit` + `Metaspace("▁", always, split)`; post-processor
//!   `$A </s>`; `<pad> </s> <unk>` (and `<s>` where the vocabulary has it) and the sentinels are
//!   special tokens.
//! - umT5 (Wan): the same pipeline from umT5's `spiece.model` — 256000 pieces `<pad> </s> <s>
//!   <unk> …` (unk id 3, read from the model) with SentencePiece byte fallback (`<0x00>` …
//!   `<0xFF>` pieces, used for characters outside the vocabulary, as `sentencepiece` does) — and
//!   google/umt5-xxl's [`UMT5_EXTRA_IDS`] = 300 sentinels (ids 256000…256299), for 256300
//!   tokens in a 256384-row embedding. transformers 5.24's `T5Tokenizer` hard-codes unk id 2
//!   and no byte fallback and so cannot read umT5's model; it maps `umt5` to its generic
//!   `TokenizersBackend`, which, like this builder, follows the model's own unk id and
//!   `byte_fallback`.
//! - CLIP: byte-level BPE with `</w>` word ends; normalizer NFC, `\s+` → " ", lowercase;
//!   pre-tokenizer CLIP's split regex then `ByteLevel`; post-processor `<|startoftext|> $A
//!   <|endoftext|>` (RobertaProcessing without offset trimming); both markers special.
//!
//! The tiny tokenizers of [`super::tiny`] are built by the same functions, and
//! `tests/text_parity.rs` checks them against transformers' own output.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Precompiled, Replace, Sequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::spiece::{ModelType, SpmModel};

pub const CLIP_BOS: &str = "<|startoftext|>";
pub const CLIP_EOS: &str = "<|endoftext|>";
/// transformers' CLIP split pattern (5.24: the two markers first, then words, single digits,
/// punctuation runs).
pub const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
pub const T5_PAD: &str = "<pad>";
pub const T5_EOS: &str = "</s>";
pub const T5_UNK: &str = "<unk>";
/// `T5Tokenizer`'s default number of sentinel tokens (ids 32000…32099 in T5-XXL's vocab).
pub const T5_EXTRA_IDS: usize = 100;
/// google/umt5-xxl's sentinels (`tokenizer_config.json`: `extra_ids` 300, ids 256000…256299).
pub const UMT5_EXTRA_IDS: usize = 300;
/// The BOS piece umT5's vocabulary has (id 2) and T5's lacks; special where present.
pub const SPM_BOS: &str = "<s>";

type BuildResult<T> = Result<T, String>;

/// A T5 Unigram tokenizer from SentencePiece pieces `(piece, score)`, as transformers'
/// `T5Tokenizer(vocab=…, _spm_precompiled_charsmap=…, extra_ids=…)` builds it.
pub fn t5_unigram(
    pieces: Vec<(String, f64)>,
    unk_id: usize,
    precompiled_charsmap: &[u8],
    extra_ids: usize,
) -> BuildResult<Tokenizer> {
    t5_unigram_with(pieces, unk_id, precompiled_charsmap, extra_ids, false)
}

/// [`t5_unigram`] with SentencePiece byte fallback on or off (umT5: on).
pub fn t5_unigram_with(
    pieces: Vec<(String, f64)>,
    unk_id: usize,
    precompiled_charsmap: &[u8],
    extra_ids: usize,
    byte_fallback: bool,
) -> BuildResult<Tokenizer> {
    let has_bos = pieces.iter().any(|(p, _)| p == SPM_BOS);
    if byte_fallback {
        let missing = (0..=255u8)
            .map(|b| format!("<0x{b:02X}>"))
            .find(|b| !pieces.iter().any(|(p, _)| p == b));
        if let Some(b) = missing {
            return Err(format!(
                "byte fallback is on but the vocabulary has no `{b}` piece"
            ));
        }
    }
    let mut vocab = pieces;
    vocab.extend(
        (0..extra_ids)
            .rev()
            .map(|i| (format!("<extra_id_{i}>"), 0.0)),
    );
    let model = Unigram::from(vocab, Some(unk_id), byte_fallback)
        .map_err(|e| format!("Unigram model: {e}"))?;
    let mut tok = Tokenizer::new(model);
    if !precompiled_charsmap.is_empty() {
        let pre = Precompiled::from(precompiled_charsmap)
            .map_err(|e| format!("precompiled normalizer charsmap: {e}"))?;
        tok.with_normalizer(Some(NormalizerWrapper::Precompiled(pre)))
            .map_err(|e| format!("normalizer: {e}"))?;
    }
    tok.with_pre_tokenizer(Some(PreSequence::new(vec![
        PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
        PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true)),
    ])));
    tok.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    let mut specials = vec![T5_EOS.to_string(), T5_UNK.to_string(), T5_PAD.to_string()];
    if has_bos {
        specials.push(SPM_BOS.to_string());
    }
    specials.extend((0..extra_ids).map(|i| format!("<extra_id_{i}>")));
    for s in &specials {
        if tok.token_to_id(s).is_none() {
            return Err(format!("the vocabulary has no `{s}` piece"));
        }
    }
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(s.clone(), true)))
        .map_err(|e| format!("special tokens: {e}"))?;
    let eos = tok.token_to_id(T5_EOS).expect("checked above");
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {T5_EOS}"))
        .and_then(|b| b.try_pair(format!("$A {T5_EOS} $B {T5_EOS}")))
        .map_err(|e| format!("post-processor template: {e}"))?
        .special_tokens(vec![(T5_EOS.to_string(), eos)])
        .build()
        .map_err(|e| format!("post-processor: {e}"))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// The T5 tokenizer of a parsed `spiece.model`, with `extra_ids` sentinels appended.
pub fn t5_from_spm(m: &SpmModel, extra_ids: usize) -> BuildResult<Tokenizer> {
    if m.model_type != ModelType::Unigram {
        return Err(format!(
            "a {:?} SentencePiece model; T5 uses Unigram",
            m.model_type
        ));
    }
    let pieces = m
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .collect();
    t5_unigram_with(
        pieces,
        m.unk_id as usize,
        &m.precompiled_charsmap,
        extra_ids,
        m.byte_fallback,
    )
}

/// A CLIP byte-level BPE tokenizer from its vocabulary and merges, as transformers'
/// `CLIPTokenizer(vocab, merges)` builds it.
pub fn clip_bpe(
    vocab: std::collections::HashMap<String, u32>,
    merges: Vec<(String, String)>,
) -> BuildResult<Tokenizer> {
    for s in [CLIP_BOS, CLIP_EOS] {
        if !vocab.contains_key(s) {
            return Err(format!("the vocabulary has no `{s}` token"));
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .unk_token(CLIP_EOS.into())
        .build()
        .map_err(|e| format!("BPE model: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| format!("normalizer: {e}"))?;
    tok.with_normalizer(Some(Sequence::new(vec![
        NormalizerWrapper::NFC(NFC),
        NormalizerWrapper::Replace(whitespace),
        NormalizerWrapper::Lowercase(Lowercase),
    ])))
    .map_err(|e| format!("normalizer: {e}"))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| format!("pre-tokenizer: {e}"))?;
    tok.with_pre_tokenizer(Some(PreSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens([
        AddedToken::from(CLIP_BOS, true),
        AddedToken::from(CLIP_EOS, true),
    ])
    .map_err(|e| format!("special tokens: {e}"))?;
    let (bos, eos) = (
        tok.token_to_id(CLIP_BOS).expect("checked"),
        tok.token_to_id(CLIP_EOS).expect("checked"),
    );
    tok.with_post_processor(Some(
        RobertaProcessing::new((CLIP_EOS.into(), eos), (CLIP_BOS.into(), bos))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tok)
}

/// Parses `merges.txt`: an optional `#version` header, then one `left right` pair per line.
pub fn parse_merges(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.into(), b.into()))
            }
            _ => return Err((i + 1, format!("expected `left right`, found `{line}`"))),
        }
    }
    Ok(merges)
}
