//! Build script: with the `cuda` feature, compiles the project's CUDA kernels to PTX with nvcc
//! into `OUT_DIR`, where the Rust side embeds them (`include_str!`), and then SASS — machine
//! code for `sm_<CUDA_COMPUTE_CAP>`, compiled ahead of time by `ptxas` — for those and for
//! candle's kernel modules (`build_sass`), so a machine's first process does not wait ≈ 20 s
//! on the driver's JIT (docs/gpu.md, "Kernels: PTX and SASS"). Without the feature it does
//! nothing, so the CPU build and CI need no CUDA toolkit.
//!
//! nvcc comes from `$CUDA_HOME/bin` (or `$CUDA_PATH/bin`), else from `PATH`; the target is
//! `sm_<CUDA_COMPUTE_CAP>` (default 90: H100/H200). The driver JIT-compiles the PTX where no
//! SASS fits, so it must accept this nvcc's PTX version (docs/gpu.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

#[path = "src/exec/sass_key.rs"]
mod sass_key;

/// (source file, PTX name in OUT_DIR)
const KERNELS: &[(&str, &str)] = &[
    ("src/models/flux/kernels/elementwise.cu", "elementwise.ptx"),
    ("src/models/flux/kernels/flash.cu", "flash.ptx"),
    ("src/exec/kernels/dequant.cu", "dequant.ptx"),
    ("src/exec/kernels/widen.cu", "widen.ptx"),
    ("src/models/fp8/quant.cu", "fp8_quant.ptx"),
];
/// Headers the kernels include.
const HEADERS: &[&str] = &["src/models/flux/kernels/common.cuh"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for h in HEADERS {
        println!("cargo:rerun-if-changed={h}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_alphanumeric()) {
        panic!("CUDA_COMPUTE_CAP=`{cap}`: expected a compute capability such as 90 or 80");
    }
    for (src, ptx) in KERNELS {
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&nvcc)
            // -lineinfo: source lines for compute-sanitizer and profilers; no effect on the code.
            .args(["-ptx", &format!("-arch=sm_{cap}"), "-O3", "-std=c++17", "-lineinfo", src, "-o"])
            .arg(out.join(ptx))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({}): {e}; the `cuda` feature needs the CUDA toolkit (set CUDA_HOME; see docs/gpu.md)", nvcc.display())
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
    build_sass(&nvcc, &cap, &out);
}

/// candle's PTX modules (candle-kernels' `src/<name>.cu`) that get SASS. `quantized` (5.8 MB of
/// PTX, ≈ 8 s of `ptxas`) is left out: mgpu dequantises GGML blocks itself, so candle's
/// quantized kernels run only if something asks candle for them — and then JIT as before.
const CANDLE_MODULES: &[&str] = &[
    "affine", "binary", "cast", "conv", "fill", "indexing", "reduce", "sort", "ternary", "unary",
];

/// Writes `OUT_DIR/sass.rs`: one `Sass` entry per PTX module compiled to SASS here — ours, and
/// candle's recompiled to PTX exactly as candle-kernels' build compiles them (its nvcc flags,
/// from its crate folder, so the PTX text is byte-identical; `exec::cuda::sass` uses the SASS
/// only for PTX whose length and hash match, anything else is JIT-compiled as before).
/// Nothing here fails the build: a step that cannot run is a `cargo:warning` and the modules
/// it concerns stay PTX-only. `MGPU_SASS=0` skips it all.
fn build_sass(nvcc: &Path, cap: &str, out: &Path) {
    println!("cargo:rerun-if-env-changed=MGPU_SASS");
    println!("cargo:rerun-if-env-changed=MGPU_CANDLE_KERNELS_DIR");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let mut ptx: Vec<(String, PathBuf)> = KERNELS
        .iter()
        .map(|(_, p)| (format!("mgpu/{}", p.trim_end_matches(".ptx")), out.join(p)))
        .collect();
    if std::env::var("MGPU_SASS").is_ok_and(|v| v.trim() == "0") {
        ptx.clear();
    } else if let Some(dir) = candle_kernels_dir() {
        let dst = out.join("candle");
        let _ = std::fs::create_dir_all(&dst);
        // candle-kernels' build (cudaforge): `sm_90a` for compute capability 9.0 and up.
        let base: u32 = cap.trim_end_matches(['a', 'f']).parse().unwrap_or(90);
        let arch = match base {
            120 => format!("{base}a"),
            b if b > 120 => format!("{b}f"),
            b if b >= 90 => format!("{b}a"),
            b => b.to_string(),
        };
        let jobs = CANDLE_MODULES.iter().map(|m| {
            let mut c = Command::new(nvcc);
            c.current_dir(&dir)
                .arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"))
                .args([
                    "--ptx",
                    "--default-stream",
                    "per-thread",
                    "--output-directory",
                ])
                .arg(&dst)
                .args(["--expt-relaxed-constexpr", "-std=c++17", "-O3"])
                .arg(format!("src/{m}.cu"));
            (format!("candle/{m}"), c)
        });
        for (name, ok) in run_all(jobs.collect()) {
            if ok {
                ptx.push((name.clone(), dst.join(format!("{}.ptx", &name[7..]))));
            }
        }
    } else {
        println!(
            "cargo:warning=candle-kernels' sources not found (set MGPU_CANDLE_KERNELS_DIR): its kernels stay PTX-only, JIT-compiled by the driver on a machine's first run"
        );
    }
    let ptxas = nvcc.with_file_name("ptxas");
    let jobs = ptx.iter().filter_map(|(name, p)| {
        let text = std::fs::read_to_string(p).ok()?;
        let target = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(".target "))?
            .split([',', ' '])
            .next()?
            .to_string();
        let mut c = Command::new(&ptxas);
        c.arg(format!("-arch={target}"))
            .arg(p)
            .arg("-o")
            .arg(p.with_extension("cubin"));
        Some((name.clone(), c))
    });
    let done: Vec<String> = run_all(jobs.collect())
        .into_iter()
        .filter_map(|(n, ok)| ok.then_some(n))
        .collect();
    let mut code = String::from("// @generated by build.rs: prebuilt SASS of PTX modules\n");
    let mut entries = String::new();
    for (i, (name, p)) in ptx
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| done.contains(n))
    {
        let (Ok(text), Ok(cubin)) = (std::fs::read(p), std::fs::read(p.with_extension("cubin")))
        else {
            continue;
        };
        let path = p.with_extension("cubin");
        code += &format!(
            "static CUBIN_{i}: Aligned<[u8; {}]> = Aligned(*include_bytes!({:?}));\n",
            cubin.len(),
            path.display().to_string()
        );
        entries += &format!(
            "    Sass {{ module: {name:?}, ptx_len: {}, ptx_fnv: {:#018x}, cubin: &CUBIN_{i}.0 }},\n",
            text.len(),
            sass_key::fnv1a64(&text)
        );
    }
    code += &format!("pub(crate) static SASS: &[Sass] = &[\n{entries}];\n");
    std::fs::write(out.join("sass.rs"), code).expect("OUT_DIR is writable");
}

/// Runs `jobs` (name, command) concurrently, quietly; whether each succeeded. A job that
/// fails is a `cargo:warning` with the tail of its error output.
fn run_all(jobs: Vec<(String, Command)>) -> Vec<(String, bool)> {
    let started: Vec<(String, std::io::Result<Child>)> = jobs
        .into_iter()
        .map(|(n, mut c)| {
            let child = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn();
            (n, child)
        })
        .collect();
    started
        .into_iter()
        .map(|(n, child)| {
            let ok = match child.and_then(|c| c.wait_with_output()) {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    let tail: String = err
                        .chars()
                        .rev()
                        .take(300)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    println!(
                        "cargo:warning=SASS for {n}: {} ({})",
                        o.status,
                        tail.replace('\n', " ")
                    );
                    false
                }
                Err(e) => {
                    println!("cargo:warning=SASS for {n}: cannot run the compiler: {e}");
                    false
                }
            };
            (n, ok)
        })
        .collect()
}

/// candle-kernels' crate folder: `$MGPU_CANDLE_KERNELS_DIR`, else the version Cargo.lock names
/// under `$CARGO_HOME/registry/src/*/` (where cargo unpacks crates.io sources).
fn candle_kernels_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MGPU_CANDLE_KERNELS_DIR") {
        return Some(PathBuf::from(d));
    }
    let lock = std::fs::read_to_string("Cargo.lock").ok()?;
    let mut lines = lock.lines();
    lines.find(|l| l.trim() == "name = \"candle-kernels\"")?;
    let version = lines
        .next()?
        .trim()
        .strip_prefix("version = ")?
        .trim_matches('"')
        .to_string();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join("registry").join("src"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("candle-kernels-{version}")))
        .filter(|d| d.join("src").join("binary.cu").is_file())
        .collect();
    found.sort();
    found.pop()
}

/// `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, or the first `nvcc` on `PATH`.
fn find_nvcc() -> PathBuf {
    let from_home = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|d| PathBuf::from(d).join("bin").join("nvcc"));
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nvcc"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_home
        .chain(from_path)
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| {
            panic!("the `cuda` feature needs nvcc: found neither $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc nor nvcc on PATH; install the CUDA toolkit and set CUDA_HOME (docs/gpu.md)")
        })
}
