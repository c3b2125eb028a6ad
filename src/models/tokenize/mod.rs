//! Prompt → token ids for FLUX's two text encoders, exactly as diffusers' `FluxPipeline` asks
//! transformers for them (`padding="max_length"`, `truncation=True`), and for Wan's umT5
//! ([`T5Tokenizer::umt5_from_file`], after [`clean::wan_prompt_clean`]).
//!
//! - [`ClipTokenizer`]: CLIP-L's byte-level BPE. `<|startoftext|> … <|endoftext|>`, truncated
//!   to 77 tokens (the last one stays `<|endoftext|>`), padded to 77 with `<|endoftext|>` (the pad
//!   token of FLUX's `tokenizer/` and of ComfyUI's CLIP tokenizer).
//! - [`T5Tokenizer`]: T5's SentencePiece Unigram. `… </s>`, truncated to `max_len` (FLUX dev
//!   512, schnell 256) keeping `</s>` last, padded with `<pad>` (id 0). umT5 (Wan, 512 with an
//!   attention mask over [`Encoded::valid_len`] tokens) is the same pipeline with umT5's
//!   vocabulary, byte fallback and 300 sentinels; its SentencePiece model may also come from
//!   the `spiece_model` tensor ComfyUI embeds in its umT5 weight files.
//!
//! Both report how many tokens the prompt had before truncation, so the executor can say
//! "prompt is 612 tokens, T5 keeps 512". Files are read with the `tokenizers` crate (the engine
//! inside transformers' fast tokenizers): `tokenizer.json` for both, or the original files —
//! `vocab.json` + `merges.txt` for CLIP, `spiece.model` for T5 — built into the same pipeline
//! by [`build`]. The model code ([`super::t5`], [`super::clip`]) takes the ids.

pub mod build;
pub mod clean;
pub mod spiece;
pub mod tiny;

use std::path::{Path, PathBuf};

use tokenizers::{PaddingDirection, Tokenizer, TruncationDirection};

/// Token ids of one prompt, padded to the requested length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly the requested length (77 for CLIP, `max_len` for T5).
    pub ids: Vec<u32>,
    /// Tokens the prompt needed, special tokens included, before truncation.
    pub tokens: usize,
    /// Whether the prompt was cut (`tokens > ids.len()`): the caller should warn.
    pub truncated: bool,
}

impl Encoded {
    /// Ids that are the prompt rather than padding (special tokens included): the attention
    /// mask's length for a masked encoding (umT5 in Wan, [`crate::models::t5::T5Encoder::prepare_masked`]).
    pub fn valid_len(&self) -> usize {
        self.tokens.min(self.ids.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {kind}: {reason}")]
    Invalid {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("{path}: don't know how to read this as a {kind} tokenizer: expected {expected}")]
    UnknownFormat {
        path: PathBuf,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("cannot tokenize {prompt:?}: {reason}")]
    Encode { prompt: String, reason: String },
    #[error("{path}: no SentencePiece model in this weights file: expected a 1-D U8 tensor `spiece_model` (ComfyUI embeds one in its umT5 files){found}")]
    NoSpieceTensor { path: PathBuf, found: String },
    #[error("cannot read the tokenizer from weights file {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("max_len {max_len} leaves no room for the prompt: the {kind} tokenizer adds {special} special token(s)")]
    MaxLen {
        kind: &'static str,
        max_len: usize,
        special: usize,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizeError> {
    std::fs::read(path).map_err(|source| TokenizeError::Io {
        path: path.into(),
        source,
    })
}

fn from_json(path: &Path, kind: &'static str) -> Result<Tokenizer, TokenizeError> {
    let text = read(path)?;
    let text = String::from_utf8(text).map_err(|e| TokenizeError::Invalid {
        path: path.into(),
        kind: "tokenizer.json",
        reason: format!("not UTF-8 ({e})"),
    })?;
    let tok: Tokenizer = text.parse().map_err(|e| TokenizeError::Invalid {
        path: path.into(),
        kind: "tokenizer.json",
        reason: format!("{e} (expected a Hugging Face tokenizer.json for {kind})"),
    })?;
    Ok(tok)
}

/// Removes a file's own truncation/padding settings: ours are applied per call.
fn plain(mut tok: Tokenizer, path: &Path) -> Result<Tokenizer, TokenizeError> {
    tok.with_truncation(None)
        .map_err(|e| TokenizeError::Invalid {
            path: path.into(),
            kind: "tokenizer",
            reason: e.to_string(),
        })?;
    tok.with_padding(None);
    Ok(tok)
}

fn id_of(
    tok: &Tokenizer,
    token: &str,
    path: &Path,
    kind: &'static str,
) -> Result<u32, TokenizeError> {
    tok.token_to_id(token)
        .ok_or_else(|| TokenizeError::Invalid {
            path: path.into(),
            kind,
            reason: format!("the vocabulary has no `{token}` token"),
        })
}

/// Encodes, truncates to `max_len` keeping the post-processor's special tokens (as the
/// `tokenizers` library does for transformers' `truncation=True`), then pads with `pad`.
fn encode_fixed(
    tok: &Tokenizer,
    prompt: &str,
    max_len: usize,
    pad: (u32, &str),
    kind: &'static str,
) -> Result<Encoded, TokenizeError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| TokenizeError::Encode {
        prompt: prompt.to_string(),
        reason: e.to_string(),
    };
    let special = tok.get_post_processor().map_or(0, |p| {
        use tokenizers::PostProcessor;
        p.added_tokens(false)
    });
    if max_len <= special {
        return Err(TokenizeError::MaxLen {
            kind,
            max_len,
            special,
        });
    }
    let mut content = tok.encode(prompt, false).map_err(err)?;
    let tokens = content.len() + special;
    let truncated = tokens > max_len;
    if truncated {
        content.truncate(max_len - special, 0, TruncationDirection::Right);
    }
    let mut enc = tok.post_process(content, None, true).map_err(err)?;
    enc.pad(max_len, pad.0, 0, pad.1, PaddingDirection::Right);
    Ok(Encoded {
        ids: enc.get_ids().to_vec(),
        tokens,
        truncated,
    })
}

/// CLIP-L's tokenizer, encoding to FLUX's fixed 77 positions.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    max_len: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl ClipTokenizer {
    /// CLIP's context length, as FluxPipeline and ComfyUI pad to.
    pub const MAX_LEN: usize = 77;
    const EXPECTED: &'static str =
        "a tokenizer.json, a vocab.json with merges.txt beside it, or a folder holding either";

    /// Reads `tokenizer.json`, or `vocab.json` (with `merges.txt` in the same folder), or a
    /// folder containing either (FLUX's `tokenizer/`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizeError> {
        let path = path.as_ref();
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            let vocab = path.join("vocab.json");
            return if json.is_file() {
                Self::from_file(json)
            } else if vocab.is_file() {
                Self::from_vocab_merges(&vocab, &path.join("merges.txt"))
            } else {
                Err(TokenizeError::UnknownFormat {
                    path: path.into(),
                    kind: "CLIP",
                    expected: Self::EXPECTED,
                })
            };
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json") && name.contains("vocab") {
            let merges = path.with_file_name("merges.txt");
            return Self::from_vocab_merges(path, &merges);
        }
        if !name.ends_with(".json") {
            return Err(TokenizeError::UnknownFormat {
                path: path.into(),
                kind: "CLIP",
                expected: Self::EXPECTED,
            });
        }
        let tok = plain(from_json(path, "CLIP")?, path)?;
        Self::new(tok, path)
    }

    /// The original CLIP files: `vocab.json` (token → id) and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self, TokenizeError> {
        let v: std::collections::HashMap<String, u32> = serde_json::from_slice(&read(vocab)?)
            .map_err(|e| TokenizeError::Invalid {
                path: vocab.into(),
                kind: "CLIP vocab.json",
                reason: format!("{e} (expected an object of token → id)"),
            })?;
        let text = String::from_utf8(read(merges)?).map_err(|e| TokenizeError::Invalid {
            path: merges.into(),
            kind: "merges.txt",
            reason: format!("not UTF-8 ({e})"),
        })?;
        let m = build::parse_merges(&text).map_err(|(line, reason)| TokenizeError::Invalid {
            path: merges.into(),
            kind: "merges.txt",
            reason: format!("line {line}: {reason}"),
        })?;
        let tok = build::clip_bpe(v, m).map_err(|reason| TokenizeError::Invalid {
            path: vocab.into(),
            kind: "CLIP vocabulary",
            reason,
        })?;
        Self::new(tok, vocab)
    }

    /// Wraps an already built tokenizer (e.g. [`tiny::clip`]); `origin` names it in errors.
    pub fn new(inner: Tokenizer, origin: &Path) -> Result<Self, TokenizeError> {
        let bos = id_of(&inner, build::CLIP_BOS, origin, "CLIP tokenizer")?;
        let eos = id_of(&inner, build::CLIP_EOS, origin, "CLIP tokenizer")?;
        Ok(ClipTokenizer {
            inner,
            bos,
            eos,
            max_len: Self::MAX_LEN,
        })
    }

    /// `<|startoftext|> prompt <|endoftext|>`, truncated and padded (with `<|endoftext|>`) to 77.
    pub fn encode(&self, prompt: &str) -> Result<Encoded, TokenizeError> {
        encode_fixed(
            &self.inner,
            prompt,
            self.max_len,
            (self.eos, build::CLIP_EOS),
            "CLIP",
        )
    }

    /// `<|endoftext|>`'s id: CLIP's pooled output is taken at its first occurrence.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
    pub fn bos_id(&self) -> u32 {
        self.bos
    }
    /// Vocabulary size including special tokens (49408 for CLIP-L).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// The underlying `tokenizers` pipeline (e.g. to save it as tokenizer.json).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// T5's tokenizer.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad: u32,
    eos: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("pad", &self.pad)
            .field("eos", &self.eos)
            .finish()
    }
}

impl T5Tokenizer {
    /// FluxPipeline's `max_sequence_length` for FLUX.1-dev.
    pub const MAX_LEN_DEV: usize = 512;
    /// FluxPipeline's `max_sequence_length` for FLUX.1-schnell.
    pub const MAX_LEN_SCHNELL: usize = 256;
    /// Wan's umT5 text length (`text_len = 512`; WanPipeline's `max_sequence_length`).
    pub const MAX_LEN_WAN: usize = 512;
    /// The tensor ComfyUI stores a SentencePiece model in, inside its umT5 weight files
    /// (`comfy/sd.py`: `tokenizer_data["spiece_model"] = clip_data[0].get("spiece_model")`).
    pub const SPIECE_TENSOR: &'static str = "spiece_model";
    const EXPECTED: &'static str =
        "a tokenizer.json, a SentencePiece spiece.model, a weights file with a `spiece_model` tensor, or a folder holding a tokenizer.json or spiece.model";

    /// Reads `tokenizer.json`, or `spiece.model` (with T5's 100 `<extra_id_N>` sentinels added,
    /// as transformers does), or a folder containing either (FLUX's `tokenizer_2/`), or a
    /// weights file carrying a `spiece_model` tensor.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizeError> {
        Self::from_file_with(path.as_ref(), build::T5_EXTRA_IDS)
    }

    /// Wan's umT5 tokenizer (google/umt5-xxl): a `tokenizer.json` as it is; umT5's
    /// `spiece.model` with 300 sentinels ([`build::UMT5_EXTRA_IDS`]); a folder holding either
    /// (diffusers' `tokenizer/`, Wan's `google/umt5-xxl/`); or a weights file with ComfyUI's
    /// embedded `spiece_model` tensor (`umt5_xxl_fp16.safetensors`,
    /// `umt5_xxl_fp8_e4m3fn_scaled.safetensors`). Encode at [`Self::MAX_LEN_WAN`] after
    /// [`clean::wan_prompt_clean`].
    pub fn umt5_from_file(path: impl AsRef<Path>) -> Result<Self, TokenizeError> {
        Self::from_file_with(path.as_ref(), build::UMT5_EXTRA_IDS)
    }

    fn from_file_with(path: &Path, extra_ids: usize) -> Result<Self, TokenizeError> {
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            let spm = path.join("spiece.model");
            return if json.is_file() {
                Self::from_file_with(&json, extra_ids)
            } else if spm.is_file() {
                Self::from_file_with(&spm, extra_ids)
            } else {
                Err(TokenizeError::UnknownFormat {
                    path: path.into(),
                    kind: "T5",
                    expected: Self::EXPECTED,
                })
            };
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json") {
            let tok = plain(from_json(path, "T5")?, path)?;
            return Self::new(tok, path);
        }
        if name.ends_with(".model") {
            return Self::from_spiece(&read(path)?, extra_ids, path);
        }
        if [".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            return Self::from_weights(path, extra_ids);
        }
        Err(TokenizeError::UnknownFormat {
            path: path.into(),
            kind: "T5",
            expected: Self::EXPECTED,
        })
    }

    /// The SentencePiece model embedded in a weights file as a 1-D U8 tensor named
    /// `spiece_model` (or `<prefix>.spiece_model`), as ComfyUI saves umT5 text encoders; built
    /// like [`Self::from_spiece`] with `extra_ids` sentinels.
    pub fn from_weights(path: &Path, extra_ids: usize) -> Result<Self, TokenizeError> {
        let weights_err = |e: crate::weights::WeightsError| TokenizeError::Weights {
            path: path.into(),
            reason: e.to_string(),
        };
        let file = crate::weights::WeightFile::open(path).map_err(weights_err)?;
        let suffix = format!(".{}", Self::SPIECE_TENSOR);
        let Some(t) = file
            .tensors()
            .iter()
            .find(|t| t.name == Self::SPIECE_TENSOR || t.name.ends_with(&suffix))
        else {
            return Err(TokenizeError::NoSpieceTensor {
                path: path.into(),
                found: String::new(),
            });
        };
        if t.dtype != crate::weights::DType::U8 || t.shape.len() != 1 {
            return Err(TokenizeError::NoSpieceTensor {
                path: path.into(),
                found: format!("; found `{}` as {:?} {:?}", t.name, t.dtype, t.shape),
            });
        }
        let bytes = file.bytes(&t.name).map_err(weights_err)?;
        Self::from_spiece(&bytes, extra_ids, &path.join(&t.name))
    }

    /// A SentencePiece `ModelProto` (the bytes of `spiece.model`); `origin` names it in errors.
    pub fn from_spiece(
        bytes: &[u8],
        extra_ids: usize,
        origin: &Path,
    ) -> Result<Self, TokenizeError> {
        let invalid = |reason: String| TokenizeError::Invalid {
            path: origin.into(),
            kind: "SentencePiece model",
            reason,
        };
        let m = spiece::SpmModel::parse(bytes).map_err(|e| invalid(e.to_string()))?;
        let tok = build::t5_from_spm(&m, extra_ids).map_err(invalid)?;
        Self::new(tok, origin)
    }

    /// Wraps an already built tokenizer (e.g. [`tiny::t5`]); `origin` names it in errors.
    pub fn new(inner: Tokenizer, origin: &Path) -> Result<Self, TokenizeError> {
        let pad = id_of(&inner, build::T5_PAD, origin, "T5 tokenizer")?;
        let eos = id_of(&inner, build::T5_EOS, origin, "T5 tokenizer")?;
        Ok(T5Tokenizer { inner, pad, eos })
    }

    /// `prompt </s>`, truncated to `max_len` (keeping `</s>` last) and padded with `<pad>`.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<Encoded, TokenizeError> {
        encode_fixed(
            &self.inner,
            prompt,
            max_len,
            (self.pad, build::T5_PAD),
            "T5",
        )
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
    /// Vocabulary size including the sentinels (32100 for T5-XXL; its embedding has 32128 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests;
