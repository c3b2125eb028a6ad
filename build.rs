//! Build script: with the `cuda` feature, compiles the project's CUDA kernels to PTX with nvcc
//! into `OUT_DIR`, where the Rust side embeds them (`include_str!`). Without the feature it
//! does nothing, so the CPU build and CI need no CUDA toolkit.
//!
//! nvcc comes from `$CUDA_HOME/bin` (or `$CUDA_PATH/bin`), else from `PATH`; the target is
//! `sm_<CUDA_COMPUTE_CAP>` (default 90: H100/H200). The driver JIT-compiles the PTX, so it must
//! accept this nvcc's PTX version (docs/gpu.md).

use std::path::{Path, PathBuf};
use std::process::Command;

/// (source file, PTX name in OUT_DIR)
const KERNELS: &[(&str, &str)] = &[
    ("src/models/flux/kernels/elementwise.cu", "elementwise.ptx"),
    ("src/models/flux/kernels/flash.cu", "flash.ptx"),
    ("src/exec/kernels/dequant.cu", "dequant.ptx"),
    ("src/exec/kernels/widen.cu", "widen.ptx"),
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
