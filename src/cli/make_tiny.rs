//! `mgpu make-tiny`: write a small deterministic random-weight model of a family in its real
//! key layout, for the tiny tour manifest (manifests/tiny.toml) and for tests.
//!
//! The weights come from [`crate::models::tiny`] (SplitMix64 per tensor, seeded by `--seed`
//! and the tensor name); the same seed always gives the same bytes. Files are named so that
//! `manifests/tiny.toml` can point at them: `flux-tiny.safetensors` (+ `lora-tiny.safetensors`,
//! a rank-4 kohya-format LoRA for it), `flux-schnell-tiny.safetensors`, `ae-tiny.safetensors`.
//! Text encoders write `t5-tiny.safetensors` + `t5-tokenizer.json` and
//! `clip-tiny.safetensors` + `clip-tokenizer.json` (tiny Unigram and BPE vocabularies whose
//! sizes match the tiny configs).
//!
//! `--format gguf` writes the FLUX transformer as city96's ComfyUI-GGUF Q8_0 files are made
//! ([`write_flux_gguf`]): `flux-tiny-Q8_0.gguf` / `flux-schnell-tiny-Q8_0.gguf`, the LoRA still
//! as safetensors. Only FLUX is written as GGUF: it is the family whose GGUF files mgpu runs
//! (city96's T5 GGUFs use llama.cpp tensor names the T5 loader does not map; the VAE and
//! CLIP-L are published as safetensors).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use clap::ValueEnum;

use super::Status;
use crate::family::Family;
use crate::models::{clip, flux, spec, t5, tiny, tokenize, vae, wan, wan_vae};
use crate::weights::gguf::{city96_type, GgufWriter, FILE_TYPE_MOSTLY_Q8_0, QUANTIZATION_VERSION};
use crate::weights::{DType as WDType, MetaValue};

/// Write a tiny random-weight model (real key layout, deterministic from the seed).
///
/// The pictures such models produce are noise-like: they exist to run the whole pipeline in
/// seconds on a CPU and to test it, not to make images.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model family: flux (transformer, plus a matching LoRA), flux-vae, t5, clip-l
    /// (text encoders, plus their tokenizer.json); wan, wan-vae, umt5 (+ tokenizer.json).
    pub family: Family,
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// File format: safetensors, or gguf (flux only: the transformer as city96's Q8_0
    /// GGUF files store it; the LoRA stays safetensors).
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    pub format: Format,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// FLUX variant: dev (with guidance embedding) or schnell (without).
    #[arg(long, value_enum, default_value_t = Variant::Dev)]
    pub variant: Variant,
    /// Stored dtype: bf16 (as the real checkpoints), f16 or f32. With --format gguf, the
    /// precision of the checkpoint being converted: values are rounded to it, then stored as
    /// Q8_0 or F32 as city96 does.
    #[arg(long, value_enum, default_value_t = StoreDType::Bf16)]
    pub dtype: StoreDType,
    /// wan only: write two experts of the Wan 2.2 A14B kind instead of one model,
    /// `wan22-high-noise-tiny.safetensors` (weights from --seed) and
    /// `wan22-low-noise-tiny.safetensors` (from --seed + 1), for a pipeline with
    /// `diffusion_low_noise`.
    #[arg(long)]
    pub experts: bool,
    /// wan --experts only: image-to-video experts (Wan 2.2 A14B I2V, 36 input channels),
    /// `wan22-i2v-high-noise-tiny.safetensors` and `wan22-i2v-low-noise-tiny.safetensors`,
    /// for jobs with an `init_image`.
    #[arg(long)]
    pub i2v: bool,
    /// wan and wan-vae only: the Wan 2.2 TI2V-5B kind — for wan a transformer with 48 latent
    /// channels in and out, `wan22-ti2v-5b-tiny.safetensors`; for wan-vae the Wan 2.2 VAE
    /// (48 latent channels, 16× spatial compression), `wan22-vae-tiny.safetensors`.
    #[arg(long)]
    pub ti2v: bool,
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
    /// Written as a city96-style FLUX GGUF rather than safetensors.
    gguf: bool,
    /// A text file written beside it (a tokenizer), if any: (file name, contents).
    extra: Option<(&'static str, String)>,
    /// Config values the weights' shapes do not fix, written into the file's metadata (as
    /// a diffusers `config.json` would give them).
    meta: Vec<(&'static str, String)>,
}

/// Why `family` is not written as GGUF, for the refusal; `None` for FLUX (written) and for the
/// families make-tiny refuses in any format.
fn no_gguf(family: Family) -> Option<&'static str> {
    match family {
        Family::Flux => None,
        Family::Wan => Some("city96's Wan GGUF files load, but make-tiny writes GGUF for flux only"),
        Family::WanVae | Family::UmT5 => Some("this model is published as safetensors, not GGUF"),
        Family::T5 => Some("city96's T5 GGUF files use llama.cpp tensor names (`enc.blk.0.attn_q.weight`), which `mgpu inspect` reads but the T5 loader does not map"),
        Family::FluxVae | Family::ClipL => Some("this model is published as safetensors, not GGUF"),
    }
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let gguf = args.format == Format::Gguf;
    if let Some(why) = no_gguf(args.family).filter(|_| gguf) {
        bail!(
            "make-tiny {} --format gguf: {why}; GGUF is written for flux only (`make-tiny flux --format gguf`, --variant dev or schnell); use --format safetensors for {}",
            args.family,
            args.family
        )
    }
    if args.experts && args.family != Family::Wan {
        bail!(
            "make-tiny {} --experts: only wan has experts (Wan 2.2 A14B's high- and low-noise models); leave --experts out",
            args.family
        )
    }
    if args.i2v && !(args.experts && args.family == Family::Wan) {
        bail!(
            "make-tiny {} --i2v: image-to-video experts are written by `make-tiny wan --experts --i2v` (Wan 2.2 A14B I2V has two experts)",
            args.family
        )
    }
    if args.ti2v && !matches!(args.family, Family::Wan | Family::WanVae) {
        bail!(
            "make-tiny {} --ti2v: the Wan 2.2 TI2V-5B kind exists for wan (the 48-channel transformer) and wan-vae (the Wan 2.2 VAE) only; leave --ti2v out",
            args.family
        )
    }
    if args.ti2v && args.experts {
        bail!(
            "make-tiny wan --experts --ti2v: Wan 2.2 TI2V-5B is one model, not two experts; use `make-tiny wan --ti2v`"
        )
    }
    let seed = args.seed;
    let outputs = match args.family {
        Family::Flux => {
            let (cfg, file) = match (args.variant, gguf) {
                (Variant::Dev, false) => (flux::Config::tiny(), "flux-tiny.safetensors"),
                (Variant::Dev, true) => (flux::Config::tiny(), "flux-tiny-Q8_0.gguf"),
                (Variant::Schnell, false) => (
                    flux::Config::tiny_schnell(),
                    "flux-schnell-tiny.safetensors",
                ),
                (Variant::Schnell, true) => {
                    (flux::Config::tiny_schnell(), "flux-schnell-tiny-Q8_0.gguf")
                }
            };
            let variant = format!("{:?}", args.variant).to_lowercase();
            let how = if gguf { ", GGUF Q8_0 as city96's" } else { "" };
            vec![
                Output {
                    file,
                    what: format!("tiny FLUX {variant} transformer{how}"),
                    tensors: tiny::flux_weights(&cfg, seed)?,
                    gguf,
                    extra: None,
                    meta: vec![],
                },
                Output {
                    file: "lora-tiny.safetensors",
                    what: format!(
                        "rank-{} LoRA for it (kohya format, alpha {})",
                        tiny::LORA_RANK,
                        tiny::LORA_ALPHA
                    ),
                    tensors: tiny::flux_lora(&cfg, seed)?,
                    gguf: false,
                    extra: None,
                    meta: vec![],
                },
            ]
        }
        Family::FluxVae => vec![Output {
            file: "ae-tiny.safetensors",
            what: "tiny FLUX autoencoder".into(),
            tensors: tiny::vae_weights(&vae::Config::tiny(), seed)?,
            gguf: false,
            extra: None,
            meta: vec![],
        }],
        Family::T5 => vec![Output {
            file: "t5-tiny.safetensors",
            what: "tiny T5 encoder".into(),
            tensors: t5::tiny_weights(seed)?.into_iter().collect(),
            gguf: false,
            extra: Some((
                "t5-tokenizer.json",
                tokenize::tiny::t5_json().map_err(anyhow::Error::msg)?,
            )),
            meta: vec![],
        }],
        Family::ClipL => vec![Output {
            file: "clip-tiny.safetensors",
            what: "tiny CLIP-L text model".into(),
            tensors: clip::tiny_weights(seed)?.into_iter().collect(),
            gguf: false,
            extra: Some((
                "clip-tokenizer.json",
                tokenize::tiny::clip_json().map_err(anyhow::Error::msg)?,
            )),
            meta: vec![],
        }],
        Family::Wan if args.experts => {
            let (cfg, files, kind) = if args.i2v {
                (
                    wan::Config::tiny_i2v(),
                    [
                        "wan22-i2v-high-noise-tiny.safetensors",
                        "wan22-i2v-low-noise-tiny.safetensors",
                    ],
                    "image-to-video",
                )
            } else {
                (
                    wan::Config::tiny(),
                    [
                        "wan22-high-noise-tiny.safetensors",
                        "wan22-low-noise-tiny.safetensors",
                    ],
                    "text-to-video",
                )
            };
            let layout = spec::diffusion_layout::<wan::WanDit>(&cfg)?;
            let expert = |file, what: &str, seed| -> anyhow::Result<Output> {
                Ok(Output {
                    file,
                    what: if args.i2v {
                        format!("tiny Wan 2.2 A14B-style {kind} {what} expert")
                    } else {
                        format!("tiny Wan 2.2 A14B-style {what} expert")
                    },
                    tensors: tiny::weights_for(&layout, seed)?,
                    gguf: false,
                    extra: None,
                    meta: vec![("num_heads", cfg.num_heads.to_string())],
                })
            };
            vec![
                expert(files[0], "high-noise", seed)?,
                expert(files[1], "low-noise", seed.wrapping_add(1))?,
            ]
        }
        Family::Wan if args.ti2v => {
            let cfg = wan::Config::tiny_ti2v();
            vec![Output {
                file: "wan22-ti2v-5b-tiny.safetensors",
                what: "tiny Wan 2.2 TI2V-5B-style transformer (48 latent channels)".into(),
                tensors: tiny::weights_for(&spec::diffusion_layout::<wan::WanDit>(&cfg)?, seed)?,
                gguf: false,
                extra: None,
                meta: vec![("num_heads", cfg.num_heads.to_string())],
            }]
        }
        Family::Wan => vec![Output {
            file: "wan-tiny.safetensors",
            what: "tiny Wan 2.1 text-to-video transformer".into(),
            tensors: tiny::weights_for(
                &spec::diffusion_layout::<wan::WanDit>(&wan::Config::tiny())?,
                seed,
            )?,
            gguf: false,
            extra: None,
            // Its heads are 16 wide, not the released models' 128: say how many.
            meta: vec![("num_heads", wan::Config::tiny().num_heads.to_string())],
        }],
        Family::UmT5 => vec![Output {
            file: "umt5-tiny.safetensors",
            what: "tiny umT5 encoder".into(),
            tensors: t5::tiny_umt5_weights(seed)?.into_iter().collect(),
            gguf: false,
            extra: Some((
                "umt5-tokenizer.json",
                tokenize::tiny::umt5_json().map_err(anyhow::Error::msg)?,
            )),
            meta: vec![],
        }],
        Family::WanVae if args.ti2v => vec![Output {
            file: "wan22-vae-tiny.safetensors",
            what: "tiny Wan 2.2 video autoencoder (48 latent channels)".into(),
            tensors: tiny::weights_for(
                &spec::vae_layout::<wan_vae::WanVae>(&wan_vae::Config::tiny22())?,
                seed,
            )?,
            gguf: false,
            extra: None,
            meta: vec![],
        }],
        Family::WanVae => vec![Output {
            file: "wan-vae-tiny.safetensors",
            what: "tiny Wan 2.1 video autoencoder".into(),
            tensors: tiny::weights_for(
                &spec::vae_layout::<wan_vae::WanVae>(&wan_vae::Config::tiny())?,
                seed,
            )?,
            gguf: false,
            extra: None,
            meta: vec![],
        }],
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for o in outputs {
        let path = args.out.join(o.file);
        let note = format!(
            "mgpu make-tiny {} seed {}: {}; random weights, not a trained model",
            args.family, seed, o.what
        );
        let bytes = if o.gguf {
            write_flux_gguf(&path, &o.tensors, args.dtype.candle(), &note)?
        } else {
            write_safetensors(&path, &o.tensors, args.dtype.candle(), &note, &o.meta)?
        };
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

/// Writes `tensors` converted to `dtype` as a safetensors file with the metadata entries
/// `meta` and `mgpu`: `note`. Deterministic: tensors are laid out by name, the header has a fixed
/// order. Written to a temporary name first, then renamed. Returns the file size.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    note: &str,
    meta: &[(&str, String)],
) -> anyhow::Result<usize> {
    let converted = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<candle_core::Result<BTreeMap<_, _>>>()
        .with_context(|| format!("converting tensors for {}", path.display()))?;
    let mut meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    meta.insert("mgpu".to_string(), note.to_string());
    let mut bytes = safetensors::serialize(&converted, Some(meta))
        .with_context(|| format!("serialising {}", path.display()))?;
    sort_metadata(&mut bytes).with_context(|| format!("serialising {}", path.display()))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(bytes.len())
}

/// Puts the `__metadata__` entries of a serialised safetensors file in name order, in place:
/// `safetensors::serialize` takes them as a `HashMap`, whose order changes from run to run, and
/// the same seed must give the same bytes. Same keys and values, so the header keeps its length.
fn sort_metadata(bytes: &mut [u8]) -> anyhow::Result<()> {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let start = 8 + PREFIX.len();
    if bytes.len() < start || &bytes[8..start] != PREFIX {
        return Ok(());
    }
    let mut values = serde_json::Deserializer::from_slice(&bytes[start..])
        .into_iter::<BTreeMap<String, String>>();
    let Some(meta) = values.next() else {
        return Ok(());
    };
    let end = start + values.byte_offset();
    let sorted = serde_json::to_vec(&meta?)?;
    anyhow::ensure!(
        sorted.len() == end - start,
        "the metadata changed length when sorted (a bug)"
    );
    bytes[start..end].copy_from_slice(&sorted);
    Ok(())
}

/// Writes a FLUX transformer's `tensors` as city96's ComfyUI-GGUF Q8_0 files are made from a
/// checkpoint stored in `dtype`: values rounded to `dtype` (the checkpoint), then each tensor
/// stored as [`city96_type`] says (Q8_0 for the blocks' matrices, F32 — lossless for a bf16
/// checkpoint — for biases, norms, the embedders and the final layer), with the key-values
/// city96's files carry (`general.architecture = "flux"`, `general.quantization_version = 2`,
/// `general.file_type = 7`, Q8_0) and `general.description = note`. Tensors are in name order.
/// Written atomically. Returns the file size.
pub fn write_flux_gguf(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    note: &str,
) -> anyhow::Result<usize> {
    let mut w = GgufWriter::new(path, "flux");
    w.add_metadata(
        "general.quantization_version",
        MetaValue::U32(QUANTIZATION_VERSION),
    )?;
    w.add_metadata("general.file_type", MetaValue::U32(FILE_TYPE_MOSTLY_Q8_0))?;
    w.add_metadata("general.description", MetaValue::String(note.into()))?;
    for (name, t) in tensors {
        let values = t
            .to_dtype(dtype)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| format!("converting `{name}` for {}", path.display()))?;
        let shape: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
        let ty = city96_type(name, &shape, WDType::Q8_0);
        w.add_f32(name, &shape, ty, &values)?;
    }
    Ok(usize::try_from(w.finish()?)?)
}
