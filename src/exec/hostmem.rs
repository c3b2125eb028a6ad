//! Moving weight bytes through host memory at memory speed, once: parallel copies out of
//! memory-mapped files, bulk page-in of mapped ranges, and giving mapped pages back once their
//! bytes live in their final home.
//!
//! Why (docs/executor.md, "Load path"): a mapped range is read by page faults, one 4 KiB page
//! at a time on the thread that touches it — a single-threaded copy out of a 22 GB map runs at
//! a few GB/s. [`copy_from`] splits a copy into pieces on all cores, asks the kernel to map each
//! piece of a mapped source in one call (`MADV_POPULATE_READ`, Linux 5.14+; skipped silently
//! where it is missing), and once the piece is copied drops the mapping's pages
//! (`MADV_DONTNEED`, [`release`]) so they stop counting as the process's resident memory: a
//! weight homed in host RAM then costs its bytes once, not once in its copy and once more in
//! the mapped page cache. The file's pages stay in the page cache (and are re-read from it if
//! the range is touched again).

use rayon::prelude::*;

/// Pieces a parallel copy or page-in is split into.
const PIECE: usize = 8 << 20;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The page-aligned range inside `bytes` (start rounded up, end rounded down), or `None`
/// when it holds no whole page. `outer` widens instead (rounds start down, end up).
fn aligned(bytes: &[u8], outer: bool) -> Option<(*mut libc::c_void, usize)> {
    let page = page_size();
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    let (a, b) = if outer {
        (start / page * page, end.div_ceil(page) * page)
    } else {
        (start.div_ceil(page) * page, end / page * page)
    };
    (b > a).then(|| (a as *mut libc::c_void, b - a))
}

/// Drops the pages of `bytes`, a range of a read-only private file mapping whose contents
/// have been copied to their home, from the process's resident memory. Only whole pages
/// inside the range are dropped (neighbouring tensors keep theirs). Reading the range again
/// re-faults the file's bytes unchanged.
///
/// Call only on ranges of read-only file mappings: on anonymous or written memory
/// `MADV_DONTNEED` would discard data.
fn release(bytes: &[u8]) {
    if let Some((ptr, len)) = aligned(bytes, false) {
        // SAFETY: the caller guarantees a read-only file mapping: DONTNEED drops clean pages,
        // whose bytes the file still holds.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_DONTNEED);
        }
    }
}

/// Copies `src` into `dst` on up to all cores, in pieces: each piece is paged in with one
/// call, copied, and — when `src` is a range of a read-only file mapping (`mapped`) — its whole
/// pages are dropped right after ([`release`]), so at most a few pieces per thread are
/// resident twice at any time. Never pass `mapped = true` for anonymous or written memory.
pub fn copy_from(dst: &mut [u8], src: &[u8], mapped: bool) {
    assert_eq!(dst.len(), src.len(), "copy_from of unequal lengths");
    let one = |d: &mut [u8], s: &[u8]| {
        if mapped && s.len() >= PAGE_MIN {
            if let Some((ptr, len)) = aligned(s, true) {
                // SAFETY: the range lies within (page-rounded) a live mapping owned by the
                // caller; POPULATE_READ only faults pages in, it never changes their contents.
                unsafe {
                    libc::madvise(ptr, len, libc::MADV_POPULATE_READ);
                }
            }
        }
        d.copy_from_slice(s);
        if mapped {
            release(s);
        }
    };
    if src.len() < 2 * PIECE {
        one(dst, src);
        return;
    }
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| one(d, s));
}

/// Below this a piece is not worth a separate page-in call.
const PAGE_MIN: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_page_calls_keep_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        let n = 3 * PIECE + 12345;
        let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // SAFETY: the file is not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let range = &map[777..n - 99];
        let mut out = vec![0u8; range.len()];
        copy_from(&mut out, range, false);
        assert_eq!(out, data[777..n - 99]);
        release(range);
        // The released pages read back from the file.
        assert_eq!(&map[..], &data[..]);
        // Small copies take the plain path.
        let mut small = vec![0u8; 10];
        copy_from(&mut small, &data[..10], false);
        assert_eq!(small, data[..10]);
        // Piecewise copy with release: same bytes, and the map still reads the file's bytes.
        let mut out2 = vec![0u8; range.len()];
        copy_from(&mut out2, range, true);
        assert_eq!(out2, data[777..n - 99]);
        assert_eq!(&map[..], &data[..]);
        // Owned memory is never released (mapped = false): the source keeps its bytes.
        let owned = data.clone();
        let mut out3 = vec![0u8; n];
        copy_from(&mut out3, &owned, false);
        assert_eq!(out3, data);
        assert_eq!(owned, data);
    }

    #[test]
    fn aligned_ranges() {
        let page = page_size();
        let buf = vec![0u8; 4 * page];
        let base = buf.as_ptr() as usize;
        let off = base.div_ceil(page) * page - base;
        let inner = aligned(&buf[off + 1..off + 3 * page], false).unwrap();
        assert_eq!(inner.1, 2 * page);
        let outer = aligned(&buf[off + 1..off + 3 * page], true).unwrap();
        assert_eq!(outer.1, 3 * page);
        assert!(aligned(&buf[off + 1..off + page], false).is_none());
        // A range inside one page: nothing inside, and no underflow computing it.
        assert!(aligned(&buf[off + 1..off + 9], false).is_none());
    }
}
