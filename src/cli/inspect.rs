//! `mgpu inspect FILE`: what a weight file holds — format, metadata, tensors (dtype, shape,
//! bytes), the detected model family and key layout — read from the header alone through
//! [`crate::weights::WeightFile`]. `--dump TENSOR --out X.npy` writes one tensor dequantised to
//! f32 for debugging a checkpoint in NumPy.
//!
//! Text output is compact: runs of transformer blocks with identical layouts are listed once
//! (`--all` lists every tensor). `--json` always lists every tensor.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use schemars::JsonSchema;
use serde::Serialize;

use super::Status;
use crate::units::ByteSize;
use crate::weights::{
    detect, npy, Detection, Format, MetaArray, MetaValue, TensorInfo, WeightFile,
};

/// Show what a weight file holds: format, metadata, tensor dtypes/shapes/bytes and the model
/// family, from the header alone.
///
/// Reads safetensors (also `*.safetensors.index.json` sharded sets), GGUF v2/v3 and PyTorch
/// zip checkpoints (.bin/.pt/.pth/.ckpt), recognised by their first bytes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The weight file (or sharded-set index) to inspect.
    pub file: PathBuf,
    /// Print JSON (every tensor, full metadata except arrays over 64 items) instead of text.
    #[arg(long)]
    pub json: bool,
    /// List every tensor and metadata entry instead of grouping repeated blocks.
    #[arg(long)]
    pub all: bool,
    /// Write this tensor, dequantised to f32, as a NumPy .npy file (with --out).
    #[arg(long, value_name = "TENSOR", requires = "out")]
    pub dump: Option<String>,
    /// The .npy file --dump writes.
    #[arg(long, value_name = "X.npy", requires = "dump")]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    // Mapping a folder or a FIFO fails with "No such device" or blocks (#12 defect 8).
    if let Ok(m) = std::fs::metadata(&args.file) {
        let what = if m.is_dir() {
            Some("is a folder: name one weights file in it (.safetensors, .gguf, .pt/.ckpt, or a sharded checkpoint's .index.json)")
        } else if !m.is_file() {
            Some("is not a regular file (a FIFO, socket or device): name a weights file")
        } else {
            None
        };
        if let Some(what) = what {
            eprintln!("error: {} {what}", args.file.display());
            return Ok(Status::Failed);
        }
    }
    let file = match WeightFile::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Status::Failed);
        }
    };
    if let (Some(name), Some(out)) = (&args.dump, &args.out) {
        let values = match file.to_f32(name) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Status::Failed);
            }
        };
        let t = file.get(name).expect("to_f32 found it");
        npy::write_f32(out, &t.shape, &values)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote {}: `{name}` {} {:?} as f32 ({} values)",
            out.display(),
            t.dtype,
            t.shape,
            values.len()
        );
        return Ok(Status::Ok);
    }
    let detection = detect(file.tensors());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&file, detection.as_ref(), args.all))?
        );
    } else {
        print!("{}", text_report(&file, detection.as_ref(), args.all));
    }
    Ok(Status::Ok)
}

/// Version of the `mgpu inspect --json` layout (bumped when a field changes meaning). Its key
/// is `inspect_format`: `format` is the weight file's format, as it was before the version.
pub const INSPECT_FORMAT: u32 = 1;

/// `mgpu inspect --json` (schemas/inspect.schema.json).
#[derive(Debug, Serialize, JsonSchema)]
pub struct InspectOutput<'a> {
    /// Layout version of this output; bumped when a field changes meaning.
    pub inspect_format: u32,
    pub mgpu_version: String,
    /// The file as named on the command line.
    pub file: String,
    pub format: Format,
    /// Family, key layout and name prefix, when recognised.
    pub detected: Option<&'a Detection>,
    /// The file's metadata by key (GGUF key-values, safetensors `__metadata__`).
    pub metadata: BTreeMap<&'a str, MetadataEntry<'a>>,
    pub tensor_count: usize,
    /// Bytes of tensor data.
    pub total_bytes: u64,
    /// Tensors and bytes per element type.
    pub dtypes: BTreeMap<&'static str, DtypeCount>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorOutput<'a>>,
}

/// One metadata value.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum MetadataEntry<'a> {
    /// The value as stored.
    Value(&'a MetaValue),
    /// An array of over 64 items, summarised (unless `--all`).
    Summary {
        /// Its GGUF type, `array<string>`, `array<i32>`, ….
        #[serde(rename = "type")]
        kind: String,
        len: usize,
    },
}

/// Tensors of one element type.
#[derive(Debug, Serialize, Default, Clone, Copy, JsonSchema)]
pub struct DtypeCount {
    pub count: usize,
    pub bytes: u64,
}

/// One tensor as recorded in the header.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TensorOutput<'a> {
    #[serde(flatten)]
    pub info: &'a TensorInfo,
    /// The shard holding it, for sharded sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

fn dtype_counts(file: &WeightFile) -> BTreeMap<&'static str, DtypeCount> {
    let mut m: BTreeMap<&'static str, DtypeCount> = BTreeMap::new();
    for t in file.tensors() {
        let e = m.entry(t.dtype.name()).or_default();
        e.count += 1;
        e.bytes += t.len;
    }
    m
}

/// The JSON of `mgpu inspect --json` (`all`: no array is summarised).
pub fn json_report<'a>(
    file: &'a WeightFile,
    detection: Option<&'a Detection>,
    all: bool,
) -> InspectOutput<'a> {
    let metadata = file
        .metadata()
        .iter()
        .map(|(k, v)| {
            let entry = match v {
                MetaValue::Array(a) if a.len() > 64 && !all => MetadataEntry::Summary {
                    kind: a.type_name(),
                    len: a.len(),
                },
                v => MetadataEntry::Value(v),
            };
            (k.as_str(), entry)
        })
        .collect();
    let sharded = matches!(file.format(), Format::SafetensorsSharded { .. });
    let tensors = file
        .tensors()
        .iter()
        .map(|t| TensorOutput {
            info: t,
            file: sharded
                .then(|| file.file_of(&t.name).ok())
                .flatten()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        })
        .collect();
    InspectOutput {
        inspect_format: INSPECT_FORMAT,
        mgpu_version: env!("CARGO_PKG_VERSION").into(),
        file: file.path().display().to_string(),
        format: file.format(),
        detected: detection,
        metadata,
        tensor_count: file.tensors().len(),
        total_bytes: file.total_bytes(),
        dtypes: dtype_counts(file),
        tensors,
    }
}

/// Metadata entries shown in text output unless `--all`.
const TEXT_METADATA: usize = 24;

fn text_report(file: &WeightFile, detection: Option<&Detection>, all: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "file      {}", file.path().display());
    let _ = writeln!(s, "format    {}", file.format());
    let _ = match detection {
        Some(d) => writeln!(
            s,
            "family    {} ({} key layout{})",
            d.family,
            d.layout.name(),
            if d.prefix.is_empty() {
                String::new()
            } else {
                format!(", prefix `{}`", d.prefix)
            }
        ),
        None => writeln!(s, "family    not recognised"),
    };
    let scaled = file.scaled_fp8_weights();
    if !scaled.is_empty() {
        let _ = writeln!(
            s,
            "fp8       ComfyUI scaled fp8: {} weight{} dequantised as fp8 × scale_weight",
            scaled.len(),
            if scaled.len() == 1 { "" } else { "s" }
        );
    }
    let meta = file.metadata();
    let _ = writeln!(
        s,
        "metadata  {} entr{}",
        meta.len(),
        if meta.len() == 1 { "y" } else { "ies" }
    );
    let shown = if all { meta.len() } else { TEXT_METADATA };
    for (k, v) in meta.iter().take(shown) {
        let v = match v {
            MetaValue::Array(a) if !all && a.len() > 8 => {
                format!("{} ({} items)", a.type_name(), a.len())
            }
            MetaValue::Array(MetaArray::String(v)) if v.len() > 8 => {
                format!("array<string> ({} items)", v.len())
            }
            v => v.to_string(),
        };
        let _ = writeln!(s, "  {k} = {v}");
    }
    if meta.len() > shown {
        let _ = writeln!(
            s,
            "  … {} more (--all or --json shows them)",
            meta.len() - shown
        );
    }
    let _ = writeln!(
        s,
        "tensors   {}, {} ({} bytes)",
        file.tensors().len(),
        ByteSize(file.total_bytes()).human(),
        file.total_bytes()
    );
    let counts = dtype_counts(file);
    let dtypes: Vec<String> = counts
        .iter()
        .map(|(d, c)| format!("{d} ×{} ({})", c.count, ByteSize(c.bytes).human()))
        .collect();
    let _ = writeln!(s, "dtypes    {}", dtypes.join(", "));
    s.push_str(&tensor_table(file.tensors(), all));
    terminal_safe(&s)
}

/// `s` with every control character but the line feed escaped (`\u{1b}`, `\r`): tensor names
/// and metadata keys come from the file and must not reach the terminal raw (#12 defect 7).
fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `name` split at its first numeric component: `("double_blocks", 3, "img_attn.qkv.weight")`.
fn block_of(name: &str) -> Option<(&str, u64, &str)> {
    let mut start = 0;
    for part in name.split('.') {
        let end = start + part.len();
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && start > 0 {
            let n = part.parse().ok()?;
            let rest = name.get(end + 1..).unwrap_or("");
            return Some((&name[..start - 1], n, rest));
        }
        start = end + 1;
    }
    None
}

/// Sort key putting `blocks.2` before `blocks.10`.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, p.to_string()),
        })
        .collect()
}

fn row(s: &mut String, w: usize, t: &TensorInfo) {
    let shape = format!("{:?}", t.shape);
    let _ = writeln!(
        s,
        "  {:<w$} {:<7} {shape:<20} {}",
        t.name,
        t.dtype.name(),
        ByteSize(t.len).human()
    );
}

fn tensor_table(tensors: &[TensorInfo], all: bool) -> String {
    let mut s = String::new();
    let w = tensors
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 80);
    let _ = writeln!(s, "  {:<w$} {:<7} {:<20} BYTES", "NAME", "DTYPE", "SHAPE");
    let mut sorted: Vec<&TensorInfo> = tensors.iter().collect();
    sorted.sort_by_cached_key(|t| natural_key(&t.name));
    if all {
        for t in sorted {
            row(&mut s, w, t);
        }
        return s;
    }
    // Group into items: lone tensors, and blocks (prefix, index) with their tensors.
    enum Item<'a> {
        Lone(&'a TensorInfo),
        Block {
            prefix: &'a str,
            index: u64,
            tensors: Vec<&'a TensorInfo>,
        },
    }
    let mut items: Vec<Item> = Vec::new();
    for t in sorted {
        match block_of(&t.name) {
            Some((prefix, index, _)) => match items.last_mut() {
                Some(Item::Block {
                    prefix: p,
                    index: i,
                    tensors,
                }) if *p == prefix && *i == index => tensors.push(t),
                _ => items.push(Item::Block {
                    prefix,
                    index,
                    tensors: vec![t],
                }),
            },
            None => items.push(Item::Lone(t)),
        }
    }
    // The layout of a block: its tensors' names within the block, dtypes and shapes.
    let layout = |tensors: &[&TensorInfo]| -> Vec<(String, crate::weights::DType, Vec<u64>)> {
        tensors
            .iter()
            .map(|t| {
                (
                    block_of(&t.name)
                        .map(|b| b.2.to_string())
                        .unwrap_or_default(),
                    t.dtype,
                    t.shape.clone(),
                )
            })
            .collect()
    };
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Item::Lone(t) => {
                row(&mut s, w, t);
                i += 1;
            }
            Item::Block {
                prefix,
                index,
                tensors,
            } => {
                for t in tensors {
                    row(&mut s, w, t);
                }
                let first = layout(tensors);
                let mut j = i + 1;
                let mut last = *index;
                while let Some(Item::Block {
                    prefix: p,
                    index: n,
                    tensors: ts,
                }) = items.get(j)
                {
                    if p != prefix || layout(ts) != first {
                        break;
                    }
                    last = *n;
                    j += 1;
                }
                if j > i + 1 {
                    let bytes = ByteSize(tensors.iter().map(|t| t.len).sum()).human();
                    let next = match &items[i + 1] {
                        Item::Block { index, .. } => *index,
                        Item::Lone(_) => unreachable!("only blocks are grouped"),
                    };
                    let n = tensors.len();
                    let _ = if j == i + 2 {
                        writeln!(s, "  {prefix}.{next}: laid out like {prefix}.{index} ({n} tensors, {bytes})")
                    } else {
                        writeln!(
                            s,
                            "  {prefix}.{next} … {prefix}.{last}: {} more blocks laid out like {prefix}.{index} ({n} tensors, {bytes} each)",
                            j - i - 1
                        )
                    };
                }
                i = j;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;

    /// #12 defect 7: ESC and CR in a tensor name are escaped, line structure kept.
    #[test]
    fn control_characters_never_reach_the_terminal() {
        let shown = terminal_safe("  evil\u{1b}[2Jname\rX F32\n  ok\tname\n");
        assert_eq!(shown, "  evil\\u{1b}[2Jname\\rX F32\n  ok\\tname\n");
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn block_names() {
        assert_eq!(
            block_of("double_blocks.3.img_attn.qkv.weight"),
            Some(("double_blocks", 3, "img_attn.qkv.weight"))
        );
        assert_eq!(
            block_of("model.diffusion_model.blocks.12.ffn.0.weight"),
            Some(("model.diffusion_model.blocks", 12, "ffn.0.weight"))
        );
        assert_eq!(block_of("img_in.weight"), None);
        assert_eq!(block_of("3.weight"), None);
    }

    #[test]
    fn runs_of_identical_blocks_collapse() {
        let t = |name: &str, shape: Vec<u64>| TensorInfo {
            name: name.into(),
            dtype: DType::F32,
            shape,
            offset: 0,
            len: 16,
        };
        let mut v = vec![t("img_in.weight", vec![4])];
        for b in 0..12 {
            v.push(t(&format!("blocks.{b}.w"), vec![4]));
            v.push(t(&format!("blocks.{b}.b"), vec![4]));
        }
        v.push(t("blocks.12.w", vec![8]));
        let out = tensor_table(&v, false);
        assert!(out.contains("blocks.1 … blocks.11: 11 more blocks laid out like blocks.0 (2 tensors, 32 B each)"), "{out}");
        assert!(out.contains("blocks.12.w"), "{out}");
        assert!(!out.contains("blocks.10.w"), "{out}");
        // Natural order: blocks.2 before blocks.10.
        let all = tensor_table(&v, true);
        assert!(all.find("blocks.2.w").unwrap() < all.find("blocks.10.w").unwrap());
    }
}
