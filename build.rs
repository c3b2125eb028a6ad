//! Build script: with the `cuda` feature, compiles the project's CUDA kernels to PTX with nvcc
//! into `OUT_DIR`, where the Rust side embeds them (`include_str!`). Without the feature it
//! does nothing, so the CPU build and CI need no CUDA toolkit.
//!
//! nvcc comes from `$CUDA_HOME/bin` (or `$CUDA_PATH/bin`), else from `PATH`; the target is
//! `sm_<CUDA_COMPUTE_CAP>` (default 90: H100/H200). The driver JIT-compiles the PTX, so it must
//! accept this nvcc's PTX version (docs/gpu.md).

use std::path::PathBuf;
use std::process::Command;

/// (source file, PTX name in OUT_DIR)
const KERNELS: &[(&str, &str)] = &[("src/exec/kernels/dequant.cu", "dequant.ptx")];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|v| std::env::var_os(v))
        .map(|d| PathBuf::from(d).join("bin").join("nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    for (src, ptx) in KERNELS {
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&nvcc)
            .args(["-ptx", &format!("-arch=sm_{cap}"), "-O3", src, "-o"])
            .arg(out.join(ptx))
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run nvcc ({}): {e}; the `cuda` feature needs the CUDA toolkit (set CUDA_HOME; see docs/gpu.md)", nvcc.display())
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
