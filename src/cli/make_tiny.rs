//! `mgpu make-tiny`: write a small deterministic random-weight model of a family in its real
//! key layout, for the demo manifest and for tests.
//!
//! The weights come from [`crate::models::tiny`] (SplitMix64 per tensor, seeded by `--seed`
//! and the tensor name); the same seed always gives the same bytes. Files are named so that
//! `manifests/demo.toml` can point at them: `flux-tiny.safetensors` (+ `lora-tiny.safetensors`,
//! a rank-4 kohya-format LoRA for it), `flux-schnell-tiny.safetensors`, `ae-tiny.safetensors`.
//! Text encoders write `t5-tiny.safetensors` + `t5-tokenizer.json` and
//! `clip-tiny.safetensors` + `clip-tokenizer.json` (tiny Unigram and BPE vocabularies whose
//! sizes match the tiny configs).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use clap::ValueEnum;

use super::Status;
use crate::family::Family;
use crate::models::{clip, flux, t5, tiny, tokenize, vae};

/// Write a tiny random-weight model (real key layout, deterministic from the seed).
///
/// The pictures such models produce are noise-like: they exist to run the whole pipeline in
/// seconds on a CPU and to test it, not to make images.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model family: flux (transformer, plus a matching LoRA), flux-vae, t5, clip-l
    /// (text encoders, plus their tokenizer.json).
    pub family: Family,
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    pub format: Format,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// FLUX variant: dev (with guidance embedding) or schnell (without).
    #[arg(long, value_enum, default_value_t = Variant::Dev)]
    pub variant: Variant,
    /// Stored dtype: bf16 (as the real checkpoints), f16 or f32.
    #[arg(long, value_enum, default_value_t = StoreDType::Bf16)]
    pub dtype: StoreDType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Safetensors,
    Gguf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    Dev,
    Schnell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreDType {
    Bf16,
    F16,
    F32,
}

impl StoreDType {
    fn candle(self) -> DType {
        match self {
            StoreDType::Bf16 => DType::BF16,
            StoreDType::F16 => DType::F16,
            StoreDType::F32 => DType::F32,
        }
    }
}

/// One file to write: its name and its tensors (f32, CPU).
struct Output {
    file: &'static str,
    what: String,
    tensors: BTreeMap<String, Tensor>,
    /// A text file written beside it (a tokenizer), if any: (file name, contents).
    extra: Option<(&'static str, String)>,
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    if args.format == Format::Gguf {
        bail!("make-tiny --format gguf: writing GGUF files is not available yet (it comes with the GGUF support of the weights module); use --format safetensors")
    }
    let seed = args.seed;
    let outputs = match args.family {
        Family::Flux => {
            let (cfg, file) = match args.variant {
                Variant::Dev => (flux::Config::tiny(), "flux-tiny.safetensors"),
                Variant::Schnell => (
                    flux::Config::tiny_schnell(),
                    "flux-schnell-tiny.safetensors",
                ),
            };
            let variant = format!("{:?}", args.variant).to_lowercase();
            vec![
                Output {
                    file,
                    what: format!("tiny FLUX {variant} transformer"),
                    tensors: tiny::flux_weights(&cfg, seed)?,
                    extra: None,
                },
                Output {
                    file: "lora-tiny.safetensors",
                    what: format!(
                        "rank-{} LoRA for it (kohya format, alpha {})",
                        tiny::LORA_RANK,
                        tiny::LORA_ALPHA
                    ),
                    tensors: tiny::flux_lora(&cfg, seed)?,
                    extra: None,
                },
            ]
        }
        Family::FluxVae => vec![Output {
            file: "ae-tiny.safetensors",
            what: "tiny FLUX autoencoder".into(),
            tensors: tiny::vae_weights(&vae::Config::tiny(), seed)?,
            extra: None,
        }],
        Family::T5 => vec![Output {
            file: "t5-tiny.safetensors",
            what: "tiny T5 encoder".into(),
            tensors: t5::tiny_weights(seed)?.into_iter().collect(),
            extra: Some((
                "t5-tokenizer.json",
                tokenize::tiny::t5_json().map_err(anyhow::Error::msg)?,
            )),
        }],
        Family::ClipL => vec![Output {
            file: "clip-tiny.safetensors",
            what: "tiny CLIP-L text model".into(),
            tensors: clip::tiny_weights(seed)?.into_iter().collect(),
            extra: Some((
                "clip-tokenizer.json",
                tokenize::tiny::clip_json().map_err(anyhow::Error::msg)?,
            )),
        }],
        Family::Wan | Family::WanVae | Family::UmT5 => {
            bail!("make-tiny {}: this family can be planned but not run in this version; available: flux, flux-vae, t5, clip-l", args.family)
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for o in outputs {
        let path = args.out.join(o.file);
        let note = format!(
            "mgpu make-tiny {} seed {}: {}; random weights, not a trained model",
            args.family, seed, o.what
        );
        let bytes = write_safetensors(&path, &o.tensors, args.dtype.candle(), &note)?;
        println!(
            "wrote {} ({} tensors, {:.1} KiB): {}",
            path.display(),
            o.tensors.len(),
            bytes as f64 / 1024.0,
            o.what
        );
        if let Some((name, text)) = o.extra {
            let path = args.out.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(Status::Ok)
}

/// Writes `tensors` converted to `dtype` as a safetensors file with one metadata entry
/// (`mgpu`: `note`). Deterministic: tensors are laid out by name, the header has a fixed
/// order. Written to a temporary name first, then renamed. Returns the file size.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    note: &str,
) -> anyhow::Result<usize> {
    let converted = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<candle_core::Result<BTreeMap<_, _>>>()
        .with_context(|| format!("converting tensors for {}", path.display()))?;
    let meta = HashMap::from([("mgpu".to_string(), note.to_string())]);
    let bytes = safetensors::serialize(&converted, Some(meta))
        .with_context(|| format!("serialising {}", path.display()))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(bytes.len())
}
