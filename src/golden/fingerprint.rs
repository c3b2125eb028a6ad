//! The machine fingerprint stored with golden files: what decides the last bits of a result.
//!
//! Candle's CPU matrix products (the `gemm` crate) are bit-identical across thread counts but
//! choose their k-chunk size from the cache sizes and their SIMD path (FMA or not) at run time;
//! cuBLAS is reproducible on the same GPU model and library version only
//! (/work/shared/design/architecture.md, "Determinism facts"). So a fingerprint holds the OS
//! and architecture, the CPU model, cache size and SIMD features, and for CUDA computes the
//! GPU model and driver/cuBLAS versions. The mgpu version is recorded but not compared: a new
//! version that changes numerics is exactly what golden files must catch.

use serde::{Deserialize, Serialize};

use crate::device::DeviceName;
use crate::hardware::Hardware;

/// One machine, as far as result bits are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub os: String,
    pub arch: String,
    /// CPU model name (`/proc/cpuinfo` "model name", or `sysctl` on macOS).
    pub cpu: String,
    /// `/proc/cpuinfo` "cache size" when present (gemm sizes its blocks from the caches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cache: Option<String>,
    /// Every cache level as gemm reads it (`/sys/devices/system/cpu/cpu0/cache`): size,
    /// associativity and line of L1d, L2, L3. gemm sizes its matrix blocks from them, which
    /// fixes the order of the additions: two CPUs with the same model name and L2 but another
    /// L1 (AMD EPYC Zen 4: 32K, Zen 5: 48K) give different low bits. `None` in golden files
    /// recorded before mgpu read it, which therefore compare by tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_caches: Option<String>,
    /// SIMD features the CPU kernels may dispatch on (`avx2`, `fma`, `avx512f`, `neon`, …).
    pub cpu_features: Vec<String>,
    /// Recorded, not compared.
    pub mgpu_version: String,
    /// The GPUs that compute (CUDA builds only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuFingerprint>,
}

/// A GPU that computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFingerprint {
    pub device: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// Driver and cuBLAS versions: filled by [`gpu_library_versions`] (CUDA builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cublas: Option<String>,
}

impl Fingerprint {
    /// This machine, with `gpus` (from [`gpus_of`]) when a model computes on CUDA.
    pub fn this_machine(gpus: Vec<GpuFingerprint>) -> Self {
        let (cpu, cpu_cache) = cpu_model_and_cache();
        Fingerprint {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu: cpu.unwrap_or_else(|| "unknown".into()),
            cpu_cache,
            cpu_caches: cpu_caches(),
            cpu_features: cpu_features(),
            mgpu_version: env!("CARGO_PKG_VERSION").into(),
            gpus,
        }
    }

    /// What differs from `other` in a way that may change result bits, one line each
    /// (empty: the bit-exact rule applies).
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{what}: recorded `{b}`, here `{a}`"));
            }
        };
        cmp("OS", self.os.clone(), other.os.clone());
        cmp("architecture", self.arch.clone(), other.arch.clone());
        cmp("CPU", self.cpu.clone(), other.cpu.clone());
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
        cmp("CPU cache", opt(&self.cpu_cache), opt(&other.cpu_cache));
        cmp("CPU caches", opt(&self.cpu_caches), opt(&other.cpu_caches));
        cmp(
            "CPU features",
            self.cpu_features.join(" "),
            other.cpu_features.join(" "),
        );
        let gpus = |g: &[GpuFingerprint]| {
            g.iter()
                .map(|g| {
                    format!(
                        "{} {} (cc {}, driver {}, cuBLAS {})",
                        g.device,
                        g.name,
                        opt(&g.compute_capability),
                        opt(&g.driver),
                        opt(&g.cublas)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        cmp("GPUs", gpus(&self.gpus), gpus(&other.gpus));
        out
    }
}

/// The compute GPUs among `compute` as `hardware` describes them. This is the hook for CUDA
/// builds: names and compute capabilities come from the probe; driver and cuBLAS versions from
/// [`gpu_library_versions`].
pub fn gpus_of(hardware: &Hardware, compute: &[DeviceName]) -> Vec<GpuFingerprint> {
    let (driver, cublas) = gpu_library_versions();
    let mut names: Vec<DeviceName> = compute.iter().copied().filter(|d| d.is_cuda()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|d| {
            let dev = hardware.device(d);
            GpuFingerprint {
                device: d.to_string(),
                name: dev
                    .and_then(|x| x.label.clone())
                    .unwrap_or_else(|| "unknown GPU".into()),
                compute_capability: dev
                    .and_then(|x| x.compute_capability)
                    .map(|(a, b)| format!("{a}.{b}")),
                driver: driver.clone(),
                cublas: cublas.clone(),
            }
        })
        .collect()
}

/// (driver version, cuBLAS version) of the CUDA build, as `13.0` and `13.0.2`: a different
/// driver or cuBLAS may pick other kernels, so golden outputs recorded under one are compared
/// by tolerance under another. `None` where the library does not answer (and always in the
/// CPU build, where no GPU computes).
#[cfg(feature = "cuda")]
pub fn gpu_library_versions() -> (Option<String>, Option<String>) {
    use cudarc::cublas::sys as cublas;
    use cudarc::driver::sys as driver;
    // The unwind guard: cudarc's loaders panic instead of returning when a library is absent.
    let driver = std::panic::catch_unwind(|| {
        let mut v = 0i32;
        // SAFETY: a plain query with a valid out-pointer; needs no initialised context.
        let r = unsafe { driver::cuDriverGetVersion(&mut v) };
        (r == driver::CUresult::CUDA_SUCCESS).then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
    })
    .ok()
    .flatten();
    let cublas = std::panic::catch_unwind(|| {
        let mut parts = [0i32; 3];
        for (p, kind) in parts.iter_mut().zip([
            cublas::libraryPropertyType::MAJOR_VERSION,
            cublas::libraryPropertyType::MINOR_VERSION,
            cublas::libraryPropertyType::PATCH_LEVEL,
        ]) {
            // SAFETY: a plain query with a valid out-pointer.
            let r = unsafe { cublas::cublasGetProperty(kind, p) };
            if r != cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return None;
            }
        }
        Some(format!("{}.{}.{}", parts[0], parts[1], parts[2]))
    })
    .ok()
    .flatten();
    (driver, cublas)
}

/// (driver version, cuBLAS version): none in the CPU build.
#[cfg(not(feature = "cuda"))]
pub fn gpu_library_versions() -> (Option<String>, Option<String>) {
    (None, None)
}

/// The data and unified cache levels of CPU 0 as Linux describes them (what gemm reads),
/// `L1d 48K 12-way 64B; L2 1024K 16-way 64B; …`; `None` where Linux does not say.
fn cpu_caches() -> Option<String> {
    let base = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut levels = Vec::new();
    for i in 0..8 {
        let dir = base.join(format!("index{i}"));
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            break;
        };
        if kind == "Instruction" {
            continue;
        }
        let tag = if kind == "Data" { "d" } else { "" };
        levels.push(format!(
            "L{level}{tag} {size} {}-way {}B",
            read("ways_of_associativity").unwrap_or_else(|| "?".into()),
            read("coherency_line_size").unwrap_or_else(|| "?".into())
        ));
    }
    (!levels.is_empty()).then(|| levels.join("; "))
}

fn cpu_model_and_cache() -> (Option<String>, Option<String>) {
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        return parse_cpuinfo(&text);
    }
    let out = std::process::Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok();
    let model = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    (model, None)
}

/// Model name and cache size of the first CPU in `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    (
        value("model name").or_else(|| value("Model")),
        value("cache size"),
    )
}

/// SIMD features detected at run time that CPU kernels dispatch on.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut v: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        check!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        check!("neon", "fp16", "sve");
    }
    v.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_and_differences() {
        let here = Fingerprint::this_machine(vec![]);
        assert_eq!(here.arch, std::env::consts::ARCH);
        assert!(here.differences(&here).is_empty());
        let mut other = here.clone();
        other.mgpu_version = "9.9.9".into();
        assert!(
            here.differences(&other).is_empty(),
            "the version is not compared"
        );
        other.cpu = "Some Other CPU".into();
        other.cpu_features = vec!["avx2".into()];
        let d = here.differences(&other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("CPU: recorded `Some Other CPU`, here "),
            "{d:?}"
        );
        let json = serde_json::to_string(&here).unwrap();
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), here);
    }

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\ncache size\t: 1024 KB\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n";
        assert_eq!(
            parse_cpuinfo(text),
            (
                Some("AMD EPYC 9654 96-Core Processor".into()),
                Some("1024 KB".into())
            )
        );
        assert_eq!(parse_cpuinfo("processor : 0\n"), (None, None));
    }

    #[test]
    fn gpus_come_from_the_hardware_of_cuda_compute_devices() {
        let hw: Hardware = crate::hardware::file::parse(
            std::path::Path::new("hw.toml"),
            "[[devices]]\nname = \"cpu\"\nmemory = \"64GiB\"\n\n[[devices]]\nname = \"cuda:0\"\nmemory = \"80GiB\"\nlabel = \"NVIDIA H100 80GB HBM3\"\ncompute_capability = [9, 0]\n",
        )
        .unwrap();
        assert!(gpus_of(&hw, &[DeviceName::Cpu]).is_empty());
        let g = gpus_of(
            &hw,
            &[DeviceName::Cuda(0), DeviceName::Cpu, DeviceName::Cuda(0)],
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].compute_capability.as_deref(), Some("9.0"));
    }
}
