//! `mgpu probe --bench` on the host, in every build: the CPU's matrix-product rate (candle's
//! f32 product, what CPU models compute with), the host's memory-copy rate on all cores (what
//! bounds copying weights into page-locked staging buffers, `exec::cuda::upload`) and the rate
//! at which a file is read back from disk after it was dropped from the page cache. A CPU build measures only these; GPU copy
//! and compute rates need the CUDA build (and `probe` says so).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

/// Side of the square f32 product timed for the CPU rate.
const MATMUL_N: usize = 1024;
/// Default size of the file written and read back for the disk rate (`probe
/// --disk-test-size`).
pub const DISK_BYTES: u64 = 256 << 20;
/// The file is written in blocks of this many bytes; its size is rounded up to a multiple.
pub const DISK_BLOCK: u64 = 4 << 20;

/// The CPU's f32 matrix-product rate in TFLOP/s: the best of a few `MATMUL_N`³ products
/// (after one warm-up), on every core candle uses.
pub fn matmul_tflops() -> Result<f64, String> {
    use candle_core::{Device, Tensor};
    let n = MATMUL_N;
    let a = Tensor::rand(0f32, 1f32, (n, n), &Device::Cpu).map_err(|e| e.to_string())?;
    let b = Tensor::rand(0f32, 1f32, (n, n), &Device::Cpu).map_err(|e| e.to_string())?;
    let _ = a.matmul(&b).map_err(|e| e.to_string())?;
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        let c = a.matmul(&b).map_err(|e| e.to_string())?;
        // Touch the result so the product is not elided.
        let _ = c.get(0).map_err(|e| e.to_string())?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e12)
}

/// Bytes copied per pass by [`host_copy_gbps`] (from one buffer into another of this size).
pub const COPY_BYTES: usize = 512 << 20;

/// The host's memory-copy rate in decimal GB/s (bytes copied per second): the best of a few
/// copies of [`COPY_BYTES`] between two buffers already written (so no page faults are timed),
/// in 8 MiB pieces spread over every core (rayon), as the staged upload copies weights.
pub fn host_copy_gbps() -> f64 {
    // filled by memset (pages touched; the contents do not matter to a copy)
    let src = vec![0x5au8; COPY_BYTES];
    let mut dst = vec![1u8; COPY_BYTES];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        parallel_copy(&mut dst, &src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    COPY_BYTES as f64 / best / 1e9
}

/// `dst.copy_from_slice(src)` in 8 MiB pieces spread over every core (rayon), as the staged
/// upload copies weights.
pub fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    use rayon::prelude::*;
    const PIECE: usize = 8 << 20;
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// The size [`disk_read_gbps`] writes for a request of `bytes`: whole [`DISK_BLOCK`]s, at
/// least one.
pub fn disk_test_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(DISK_BLOCK).max(1) * DISK_BLOCK
}

/// Writes `bytes` (rounded up to whole [`DISK_BLOCK`]s) to a temporary file in `dir`,
/// flushes it to disk, asks the kernel to drop it from the page cache
/// (`posix_fadvise(DONTNEED)`, Linux) and times reading it back: decimal GB/s. On file systems
/// that keep files in memory (tmpfs) this measures memory. A failed write (a full disk, say)
/// is an error naming the folder and the size; the temporary file is removed either way.
pub fn disk_read_gbps(dir: &Path, bytes: u64) -> Result<f64, String> {
    let bytes = disk_test_bytes(bytes) as usize;
    let blocks = bytes / DISK_BLOCK as usize;
    let mut f = tempfile::Builder::new()
        .prefix(".mgpu-probe-")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    let block: Vec<u8> = (0..DISK_BLOCK as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let write_err = |e: std::io::Error| {
        format!(
            "cannot write the {} MiB test file in {}: {e}",
            bytes >> 20,
            dir.display()
        )
    };
    for _ in 0..blocks {
        f.write_all(&block).map_err(write_err)?;
    }
    f.as_file().sync_all().map_err(write_err)?;
    drop_from_cache(f.as_file());
    let mut r = f.reopen().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; DISK_BLOCK as usize];
    let t = Instant::now();
    let mut total = 0usize;
    loop {
        let k = r.read(&mut buf).map_err(|e| e.to_string())?;
        if k == 0 {
            break;
        }
        total += k;
    }
    let secs = t.elapsed().as_secs_f64();
    if total != bytes {
        return Err(format!("read {total} of {bytes} bytes back"));
    }
    Ok(total as f64 / secs / 1e9)
}

#[cfg(target_os = "linux")]
fn drop_from_cache(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_from_cache(_: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_and_the_disk_measure_positive_finite_rates() {
        let t = matmul_tflops().unwrap();
        assert!(t.is_finite() && t > 1e-4 && t < 100.0, "{t}");
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB, not the probe's 256: CI machines can be short of disk (one run failed with
        // ENOSPC here), and the code path is the same.
        let g = disk_read_gbps(dir.path(), 8 << 20).unwrap();
        assert!(g.is_finite() && g > 0.0, "{g}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the file is removed"
        );
    }
}
