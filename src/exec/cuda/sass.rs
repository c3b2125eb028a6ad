//! Prebuilt SASS for PTX modules: the first process on a machine does not wait on the driver's
//! JIT (issue 11; docs/gpu.md, "Kernels: PTX and SASS").
//!
//! candle loads its kernel modules (and `get_or_load_custom_func` ours) as PTX text through
//! cudarc's `cuModuleLoadData`; the driver then compiles each module for the GPU, ≈ 23 s of
//! one core for what a FLUX run uses on the lent H200's host (binary 8.5 s, unary 3.4,
//! indexing 3.0, conv 2.8, …; `tools/jit_probe.py`), cached per machine in
//! `~/.nv/ComputeCache`. The driver serialises those compiles inside a process (threads gain
//! nothing), and candle offers no way to hand it compiled code. So mgpu defines the driver
//! entry point `cuModuleLoadData` itself: the executable's definition is what cudarc's call
//! binds to, and it forwards to libcuda's (found with `dlsym(RTLD_NEXT)`). When the image is
//! PTX text whose length and FNV-1a hash (`exec::sass_key`) match a module build.rs compiled
//! with `ptxas` for this build's GPU architecture ([`SASS`]), the driver gets that SASS
//! instead; when the driver refuses it (another GPU architecture), or nothing matches, it gets
//! the PTX as before. build.rs compiles candle's modules from candle-kernels' sources with
//! candle's own nvcc flags, so their PTX is byte-identical to candle's and the SASS is what
//! the JIT would have produced from it (same compiler generation: the CUDA 13.0 toolkit's
//! `ptxas` and driver 580's JIT); the GPU check compares the outputs.
//!
//! `MGPU_SASS=off` (at run time) sends every module to the JIT; `MGPU_SASS=log` prints one
//! line per module loaded (SASS or JIT, its size).

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::sys::{CUmodule, CUresult};

use crate::exec::sass_key::fnv1a64;

/// One module's SASS, found by the length and hash of the PTX it was compiled from.
pub(crate) struct Sass {
    /// `candle/<name>` or `mgpu/<name>`, for the log.
    pub module: &'static str,
    pub ptx_len: usize,
    pub ptx_fnv: u64,
    /// The cubin (an ELF image), 64-byte aligned.
    pub cubin: &'static [u8],
}

/// `include_bytes!` gives no alignment; the driver reads the cubin as an ELF image.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

include!(concat!(env!("OUT_DIR"), "/sass.rs"));

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Log,
    Off,
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(
        || match std::env::var("MGPU_SASS").as_deref().map(str::trim) {
            Ok("off" | "0" | "false") => Mode::Off,
            Ok("log") => Mode::Log,
            _ => Mode::On,
        },
    )
}

type LoadData = unsafe extern "C" fn(*mut CUmodule, *const c_void) -> CUresult;

/// libcuda's `cuModuleLoadData`: the next definition after the executable's own.
fn real() -> Option<LoadData> {
    static REAL: OnceLock<Option<LoadData>> = OnceLock::new();
    *REAL.get_or_init(|| {
        let name = c"cuModuleLoadData";
        // SAFETY: dlsym with a NUL-terminated name; the result, when not null, is libcuda's
        // cuModuleLoadData, whose C signature is `LoadData`.
        unsafe {
            let mut f = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
            if f.is_null() {
                let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if !h.is_null() {
                    f = libc::dlsym(h, name.as_ptr());
                }
            }
            (!f.is_null()).then(|| std::mem::transmute::<*mut c_void, LoadData>(f))
        }
    })
}

/// The prebuilt SASS for `ptx` (PTX text without its NUL), if one was built from that text.
fn lookup(ptx: &[u8]) -> Option<&'static Sass> {
    let candidates = || SASS.iter().filter(|s| s.ptx_len == ptx.len());
    candidates().next()?;
    let h = fnv1a64(ptx);
    candidates().find(|s| s.ptx_fnv == h)
}

/// Whether `image` (as `cuModuleLoadData` receives it) is PTX text: not an ELF cubin, not a
/// fatbin (whose magic numbers start with bytes outside ASCII text).
///
/// # Safety
/// `image` points at a module image: readable for at least 4 bytes.
unsafe fn is_ptx_text(image: *const c_void) -> bool {
    let p = image as *const u8;
    // up to 4 bytes, not past a NUL (a PTX text shorter than that ends there)
    for i in 0..4 {
        let b = *p.add(i);
        if b == 0 {
            return true;
        }
        if i == 0 && b == 0x7f || !b.is_ascii() {
            return false;
        }
    }
    true
}

/// Keeps this module's `cuModuleLoadData` in the executable: the linker takes an object from
/// the library only for a symbol something already needs, and cudarc's reference comes after
/// the library on the link line. Called where a CUDA device is opened.
pub fn link() {
    std::hint::black_box(cuModuleLoadData as unsafe extern "C" fn(_, _) -> _);
}

/// The driver entry point, as `cuda.h` declares it; see the module doc. Not called by mgpu's
/// code directly: cudarc's `cuModuleLoadData` binds to it at link time.
///
/// # Safety
/// As the driver's: `module` is writable, `image` a PTX (NUL-terminated), cubin or fatbin image.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    let Some(real) = real() else {
        return CUresult::CUDA_ERROR_NOT_INITIALIZED;
    };
    let mode = mode();
    if image.is_null() || !is_ptx_text(image) {
        return real(module, image);
    }
    let ptx = CStr::from_ptr(image as *const c_char).to_bytes();
    if mode != Mode::Off {
        if let Some(s) = lookup(ptx) {
            let rc = real(module, s.cubin.as_ptr() as *const c_void);
            if rc == CUresult::CUDA_SUCCESS {
                if mode == Mode::Log {
                    eprintln!(
                        "sass: {} from prebuilt SASS ({} bytes)",
                        s.module,
                        s.cubin.len()
                    );
                }
                return rc;
            }
            if mode == Mode::Log {
                eprintln!(
                    "sass: {}: the driver refused its SASS ({rc:?}); JIT",
                    s.module
                );
            }
        }
    }
    if mode == Mode::Log {
        let entry = ptx
            .split(|&b| b == b'\n')
            .find_map(|l| std::str::from_utf8(l).ok()?.split(".entry ").nth(1))
            .and_then(|r| r.split(['(', ' ']).next())
            .unwrap_or("?");
        eprintln!(
            "sass: PTX module of {} bytes (first kernel {entry}) to the JIT",
            ptx.len()
        );
    }
    real(module, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_keyed_by_the_ptx_it_was_built_from() {
        for s in SASS {
            assert_eq!(&s.cubin[..4], b"\x7fELF", "{}", s.module);
            assert_eq!(s.cubin.as_ptr() as usize % 64, 0, "{}", s.module);
        }
        // The project's own PTX, as the kernels embed it, finds its SASS when it was built.
        let widen = include_str!(concat!(env!("OUT_DIR"), "/widen.ptx"));
        if SASS.iter().any(|s| s.module == "mgpu/widen") {
            assert_eq!(
                lookup(widen.as_bytes()).map(|s| s.module),
                Some("mgpu/widen")
            );
        }
        assert!(lookup(b"// not a module anyone built\n").is_none());
    }
}
