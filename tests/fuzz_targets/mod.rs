//! A stable-Rust fuzzing harness over arbitrary bytes (docs/fuzzing.md): a deterministic
//! mutation-based generator seeded from the committed corpora in `fuzz/corpus/<target>/`, and
//! one function per parser that must return (an error is fine) and never panic.
//!
//! Input `i` of a run with seed `s` depends only on `(s, i)` and the corpus, so a crash, a stack
//! overflow or a hang found by `cargo run --release --example fuzz` is reproduced from its
//! index alone. Shared by `tests/fuzz.rs` (a short run of each target in `cargo test`) and
//! `examples/fuzz.rs` (long runs, with a watchdog process for aborts and timeouts).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mgpu::family::Family;
use mgpu::weights::keymap::{canonicalize, CanonicalLayout};
use mgpu::weights::lora::LoraSet;

/// Every target, in the order runs go through them.
pub const TARGETS: &[&str] = &["manifest", "alloc", "safetensors", "gguf", "lora", "pickle"];

/// The committed seeds of `target`, in name order.
pub fn corpus(root: &Path, target: &str) -> Vec<Vec<u8>> {
    let dir = root.join("fuzz/corpus").join(target);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// splitmix64: a small, good, seedable generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that find boundary bugs, written little-endian at 1, 2, 4 or 8 bytes.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// Text that the text targets' grammars care about.
const TOKENS: &[&[u8]] = &[
    b"[[jobs]]\n",
    b"[models.flux]\n",
    b"[settings]\n",
    b" = ",
    b"\"",
    b"'",
    b"\n",
    b"\r",
    b"\r\n",
    b"{seed}",
    b"{index:05}",
    b"{job}",
    b"/../",
    b";",
    b",",
    b"*",
    b"%",
    b"gb",
    b"cuda:0",
    b"disk",
    b"4294967295",
    b"-1",
    b"nan",
    b"1e308",
    b"\\u0000",
    b"(((((",
    b"{99999}",
    b"\xf0\x9f\xa6\x8a",
];

/// Input `index` of the run seeded `seed`: a corpus entry with 1 to 8 stacked mutations.
pub fn input(corpus: &[Vec<u8>], seed: u64, index: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut data = corpus[rng.below(corpus.len())].clone();
    if index == 0 {
        return data;
    }
    for _ in 0..1 + rng.below(8) {
        mutate(&mut data, corpus, &mut rng);
    }
    data.truncate(1 << 20);
    data
}

fn mutate(d: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let len = d.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            d[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            d[i] = rng.next() as u8;
        }
        2 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            d.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            d.drain(i..i + n);
        }
        4 if len > 0 => {
            // Duplicate a range (repetition finds quadratic paths and deep nesting).
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(32));
            let piece = d[i..i + n].to_vec();
            let most = if rng.below(8) == 0 { 2000 } else { 8 };
            let times = 1 + rng.below(most);
            let at = rng.below(len + 1);
            let rep: Vec<u8> = piece.iter().copied().cycle().take(n * times).collect();
            d.splice(at..at, rep);
        }
        5 => {
            // An interesting integer at a random place (lengths, counts, offsets).
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let w = [1usize, 2, 4, 8][rng.below(4)];
            let bytes = v.to_le_bytes();
            if len >= w {
                let i = rng.below(len - w + 1);
                d[i..i + w].copy_from_slice(&bytes[..w]);
            }
        }
        6 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            let i = rng.below(len + 1);
            d.splice(i..i, t.iter().copied());
        }
        7 => {
            // Splice with another corpus entry.
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let a = rng.below(len + 1);
                let b = rng.below(other.len());
                let n = 1 + rng.below(other.len() - b);
                d.truncate(a);
                d.extend_from_slice(&other[b..b + n]);
            }
        }
        8 if len > 0 => {
            d.truncate(rng.below(len));
        }
        _ if len > 1 => {
            // Swap two bytes.
            let (i, j) = (rng.below(len), rng.below(len));
            d.swap(i, j);
        }
        _ => d.push(rng.next() as u8),
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The FLUX layout the fixture LoRAs were made for.
fn lora_base(root: &Path) -> &'static CanonicalLayout {
    static BASE: OnceLock<CanonicalLayout> = OnceLock::new();
    BASE.get_or_init(|| {
        let f = mgpu::weights::WeightFile::open(
            root.join("tests/fixtures/lora/flux_base_bfl_f32.safetensors"),
        )
        .expect("the LoRA base fixture");
        canonicalize(Family::Flux, f.tensors()).expect("the LoRA base fixture's layout")
    })
}

/// Runs one input through `target`. Errors are fine; a panic is a bug. `scratch` is a file
/// path the file-based targets may overwrite.
pub fn run(target: &str, data: &[u8], root: &Path, scratch: &Path) {
    let p = Path::new("fuzz.bin");
    match target {
        "manifest" => {
            let text = String::from_utf8_lossy(data);
            if let Err(d) = mgpu::manifest::load_str(Path::new("fuzz/m.toml"), &text) {
                let _ = d.render(false);
            }
        }
        "alloc" => {
            let text = String::from_utf8_lossy(data);
            let (alloc, pattern) = text.split_once('\0').unwrap_or((&text, "a.*"));
            if let Err(errors) = mgpu::alloc::parse_all(alloc) {
                for e in errors {
                    let _ = (e.help(), e.render(alloc));
                }
            }
            if let Ok(o) = mgpu::alloc::Override::new(pattern, mgpu::device::DeviceName::Cpu) {
                let _ = o.matches("double_blocks.0.img_attn.qkv.weight");
            }
            // Through the manifest too: carets into escaped strings.
            let m = format!(
                "[settings]\ncompute = \"cpu\"\n[models.flux]\nfamily = \"flux\"\nfile = \"f.safetensors\"\nallocation = {}\noverrides = [{{ pattern = {}, device = \"cpu\" }}]\n",
                toml_string(alloc),
                toml_string(pattern)
            );
            if let Err(d) = mgpu::manifest::load_str(Path::new("fuzz/m.toml"), &m) {
                let _ = d.render(false);
            }
        }
        "safetensors" => {
            let _ = mgpu::weights::safetensors::header_from_bytes(p, data);
        }
        "gguf" => {
            let _ = mgpu::weights::gguf::parse(p, data);
        }
        "lora" => {
            std::fs::write(scratch, data).expect("write the scratch file");
            let base = lora_base(root);
            for strict in [true, false] {
                let _ = LoraSet::load(&[(scratch.to_path_buf(), 0.5)], Family::Flux, base, strict);
            }
        }
        "pickle" => {
            let _ = mgpu::weights::pickle::vm::unpickle(data);
        }
        other => panic!(
            "unknown fuzz target `{other}` (known: {})",
            TARGETS.join(", ")
        ),
    }
}
