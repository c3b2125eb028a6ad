#!/usr/bin/env python3
"""How the CUDA driver's JIT of PTX modules scales (issue 11, the first process on a machine).

candle's kernels ship as PTX text only; the driver compiles a module when it is first loaded on
a machine (then caches it in ~/.nv/ComputeCache or $CUDA_CACHE_PATH). This measures, with the
driver alone (libcuda through ctypes, no torch, no mgpu), loading the given PTX files:

  seq       one thread, one module after another
  threads   one thread per module, one process, one context
  procs     one process per module
  cached    one thread again, after `threads` filled a fresh cache (what a later run pays)

JIT timings use a fresh cache folder per mode (`CUDA_CACHE_PATH`), so nothing is found.
Usage: python3 tools/jit_probe.py FILE.ptx ...   (prints one line per module and mode)
"""

import ctypes
import os
import subprocess
import sys
import tempfile
import threading
import time


def cuda():
    lib = ctypes.CDLL("libcuda.so.1")
    check(lib, lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(lib, lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    return lib, ctx


def check(lib, rc, what):
    if rc != 0:
        name = ctypes.c_char_p()
        lib.cuGetErrorName(rc, ctypes.byref(name))
        raise SystemExit(f"{what}: CUDA error {rc} ({name.value})")


def load(lib, ctx, path, out, i):
    check(lib, lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    data = open(path, "rb").read() + b"\0"
    mod = ctypes.c_void_p()
    t = time.perf_counter()
    check(lib, lib.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(data)), f"cuModuleLoadData {path}")
    out[i] = time.perf_counter() - t


def run_one(mode, paths):
    """In this process (its CUDA_CACHE_PATH set by the caller): load `paths` as `mode` says."""
    lib, ctx = cuda()
    times = [0.0] * len(paths)
    t = time.perf_counter()
    if mode == "threads":
        ts = [threading.Thread(target=load, args=(lib, ctx, p, times, i)) for i, p in enumerate(paths)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
    else:
        for i, p in enumerate(paths):
            load(lib, ctx, p, times, i)
    wall = time.perf_counter() - t
    return wall, times


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, paths = sys.argv[2], sys.argv[3:]
        wall, times = run_one(mode, paths)
        print(f"{wall:.3f} " + " ".join(f"{x:.3f}" for x in times))
        return
    paths = sys.argv[1:]
    if not paths:
        raise SystemExit(__doc__)
    names = [os.path.basename(p) for p in paths]
    sizes = [os.path.getsize(p) for p in paths]

    def child(mode, cache, ps):
        env = dict(os.environ, CUDA_CACHE_PATH=cache, CUDA_CACHE_MAXSIZE=str(4 << 30))
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", mode, *ps], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        return time.perf_counter() - t, float(out[0]), [float(x) for x in out[1:]]

    for mode in ("seq", "threads", "procs", "cached"):
        cache = tempfile.mkdtemp(prefix=f"jit-{mode}-")
        if mode == "cached":
            child("threads", cache, paths)  # fill it
            proc_wall, wall, times = child("seq", cache, paths)
        elif mode == "procs":
            t = time.perf_counter()
            ps = [subprocess.Popen([sys.executable, __file__, "--child", "seq", p], stdout=subprocess.PIPE, text=True,
                                   env=dict(os.environ, CUDA_CACHE_PATH=cache, CUDA_CACHE_MAXSIZE=str(4 << 30)))
                  for p in paths]
            times = [float(p.communicate()[0].split()[1]) for p in ps]
            wall = proc_wall = time.perf_counter() - t
        else:
            proc_wall, wall, times = child(mode, cache, paths)
        print(f"{mode:8s} wall {wall:7.3f} s (process {proc_wall:7.3f} s), sum {sum(times):7.3f} s")
        for n, s, x in zip(names, sizes, times):
            print(f"  {mode:8s} {n:24s} {s / 1e6:7.2f} MB {x:7.3f} s")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
