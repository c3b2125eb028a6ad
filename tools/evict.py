#!/usr/bin/env python3
"""Drops files' pages from the page cache without root, so the next read reaches the disk:
fsync (dirty pages cannot be dropped), then posix_fadvise(POSIX_FADV_DONTNEED) on the whole
file. With --read FILE, then reads FILE sequentially once (cold, 16 MiB reads) for at most
--seconds seconds and prints the rate in GB/s (decimal) as the last line.

    python3 tools/evict.py FILE...                 # evict
    python3 tools/evict.py --read F --seconds 20 FILE...   # evict all, then time a cold read of F

Pages still mapped by a running process are not dropped; `fincore` (util-linux), when
installed, shows what stayed resident. Standard library only.
"""

import os
import sys
import time


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_read(path, seconds):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = os.read(fd, 16 << 20)
            if not b:
                break
            n += len(b)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return n, dt


def main():
    args = sys.argv[1:]
    read, seconds = None, 20.0
    while args and args[0].startswith("--"):
        if args[0] == "--read":
            read, args = args[1], args[2:]
        elif args[0] == "--seconds":
            seconds, args = float(args[1]), args[2:]
        else:
            sys.exit(__doc__)
    if not args and not read:
        sys.exit(__doc__)
    for p in args + ([read] if read else []):
        evict(p)
    if read:
        n, dt = cold_read(read, seconds)
        evict(read)
        print(f"cold read of {read}: {n} bytes in {dt:.2f} s")
        print(f"{n / dt / 1e9:.3f}")


if __name__ == "__main__":
    main()
