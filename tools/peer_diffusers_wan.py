#!/usr/bin/env python3
"""Peer baseline for Wan 2.1 text-to-video on the GPU machine: diffusers' WanTransformer3DModel.

What it measures (random bf16 weights, real architecture and shapes; nothing is downloaded):
  1. copy bandwidths: pinned and pageable host->device, pinned device->host;
  2. for the Wan 2.1 1.3B and 14B transformer shapes at 480x832, 81 frames (latent
     21x60x104 -> 21x30x52 = 32 760 tokens after the 1x2x2 patch), a 512-token T5 context,
     batch 1 and batch 2 (= the cond + uncond passes of one CFG step), seconds per forward
     (median of --reps runs after one warm-up) and peak GPU memory:
       a. all resident on the GPU;
       b. diffusers block-level group offloading, one block per group, CUDA-stream prefetch of
          the next block: 100 % of the blocks live in pinned host RAM (setup time recorded:
          the move to host plus diffusers' pinning), after checking that its batch-1 output
          equals the resident model's.
It writes $OUT/wan_peer.json (after every measurement, so a cut-off run keeps what it had) and
prints a table. Estimated from FLOP counts (not yet measured): 3-5 minutes on one H200; a time budget (--budget-s) skips what
would not finish, and what does not fit on the GPU is skipped with the reason recorded.

Weights are made on the GPU (the model is constructed under `torch.device("cuda")` with bf16
as the default dtype, so torch.nn's own initialisers run there), then the modules diffusers
keeps in fp32 when loading a checkpoint (`_keep_in_fp32_modules`) are cast to fp32, as
`from_pretrained(torch_dtype=torch.bfloat16)` would leave them.

Running it on the GPU machine: it has torch and accelerate (group offloading needs it) but not
diffusers. The script travels with the checkout; copy the wheels of shared/bench/wheels into a
git-ignored folder of the checkout (e.g. .carry/wheels, listed in .git/info/exclude), carry it:
    python3 -m pip install --no-deps -q .carry/wheels/*.whl
    PYTHONUNBUFFERED=1 python3 tools/peer_diffusers_wan.py
Checking the logic on a CPU (tiny shapes, no streams, no bandwidths):
    python tools/peer_diffusers_wan.py --tiny
"""
import argparse
import json
import os
import statistics
import time

import torch

# diffusers' config names; values from Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers transformer configs
# (dim = heads x 128: 1536 and 5120; as src/inventory/synthetic.rs).
COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
SHAPES = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}
# 480x832, 81 frames: the Wan VAE makes (81-1)/4+1 = 21 latent frames at 1/8 the size.
VIDEO = dict(frames=21, height=60, width=104, context=512)
TINY_COMMON = dict(COMMON, text_dim=32)
TINY_SHAPES = {
    "tiny-a": dict(num_attention_heads=2, attention_head_dim=24, ffn_dim=64, num_layers=2),
    "tiny-b": dict(num_attention_heads=3, attention_head_dim=24, ffn_dim=96, num_layers=3),
}
TINY_VIDEO = dict(frames=3, height=4, width=6, context=8)

res = {}


def log(key, value):
    res[key] = value
    print(f"{key}: {value}", flush=True)
    with open(os.path.join(OUT, "wan_peer.json"), "w") as f:
        json.dump(res, f, indent=1)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gb(nbytes):
    return round(nbytes / 1e9, 2)


def bandwidth(src, dst, nbytes, reps=5):
    """GB/s of `dst.copy_(src)` between 'pinned', 'pageable' (host) and 'cuda', median of reps."""
    def alloc(kind):
        if kind == "cuda":
            return torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=(kind == "pinned"))
    a, b = alloc(src), alloc(dst)
    a.fill_(1)
    for _ in range(2):
        b.copy_(a, non_blocking=True)
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        b.copy_(a, non_blocking=True)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    del a, b
    return round(nbytes / statistics.median(ts) / 1e9, 1)


def model_config(name, tiny):
    return dict(TINY_COMMON if tiny else COMMON, **(TINY_SHAPES if tiny else SHAPES)[name])


def count_params(cfg):
    from diffusers import WanTransformer3DModel
    with torch.device("meta"):
        m = WanTransformer3DModel(**cfg)
    return sum(p.numel() for p in m.parameters())


def make_model(cfg, dev):
    """The model with random weights made on `dev` in bf16; fp32 where diffusers keeps fp32."""
    from diffusers import WanTransformer3DModel
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dev), torch.no_grad():
            m = WanTransformer3DModel(**cfg)
    finally:
        torch.set_default_dtype(old)
    # As from_pretrained matches them: any parameter or buffer with a listed name in its path.
    keep = set(m._keep_in_fp32_modules or [])
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if keep & set(name.split(".")) and t.is_floating_point():
            t.data = t.data.float()
    return m.eval()


def inputs(cfg, video, batch, dev):
    g = torch.Generator(device=dev).manual_seed(1)
    bf = torch.bfloat16
    return dict(
        hidden_states=torch.randn(batch, cfg["in_channels"], video["frames"], video["height"], video["width"],
                                  device=dev, dtype=bf, generator=g),
        timestep=torch.full((batch,), 999.0, device=dev),
        encoder_hidden_states=torch.randn(batch, video["context"], cfg["text_dim"], device=dev, dtype=bf,
                                          generator=g),
        return_dict=False,
    )


def tokens(cfg, video):
    pt, ph, pw = cfg["patch_size"]
    return (video["frames"] // pt) * (video["height"] // ph) * (video["width"] // pw)


class OutOfTime(Exception):
    pass


def seconds_per_forward(m, inp, dev, reps, deadline):
    """One warm-up forward, then `reps` timed ones (fewer if the budget would run out): median s.

    Returns (median seconds, runs timed, peak GPU GB or None, whether the output was finite)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        t = time.perf_counter()
        out = m(**inp)[0]
        sync(dev)
        first = time.perf_counter() - t
        finite = bool(torch.isfinite(out).all())
        del out
        room = deadline - time.perf_counter()
        n = min(reps, int(room / max(first, 1e-6)))
        if n < 1:
            raise OutOfTime(f"warm-up took {first:.1f} s and {room:.0f} s of the budget remain")
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            m(**inp)
            sync(dev)
            ts.append(time.perf_counter() - t)
    peak = gb(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    return round(statistics.median(ts), 3), n, peak, finite


def activation_bytes(cfg, video, batch):
    """A generous estimate of one forward's activations: a few hidden-state copies, the FFN's
    hidden layer (twice, for the GELU) and the context."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n = tokens(cfg, video)
    return batch * 2 * (n * (8 * dim + 2 * cfg["ffn_dim"]) + video["context"] * 4 * dim)


def run_shape(name, args, dev, video, deadline, rows):
    cfg = model_config(name, args.tiny)
    n_params = count_params(cfg)
    weights = 2 * n_params
    log(f"{name}_params_B", round(n_params / 1e9, 3))
    log(f"{name}_tokens", tokens(cfg, video))
    act = max(activation_bytes(cfg, video, b) for b in args.batches)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        if weights + act > free:
            log(f"{name}_skipped", f"needs about {gb(weights + act)} GB on the GPU, {gb(free)} GB free")
            return
    if time.perf_counter() > deadline:
        log(f"{name}_skipped", "time budget spent")
        return
    t0 = time.perf_counter()
    m = make_model(cfg, dev)
    sync(dev)
    log(f"{name}_make_model_s", round(time.perf_counter() - t0, 1))

    # The resident model's batch-1 output, to check that the offloaded model computes the same.
    with torch.inference_mode():
        reference = m(**inputs(cfg, video, 1, dev))[0].float().cpu()

    def measure(mode, setup_s=None):
        for b in args.batches:
            key = f"{name}_{mode}_b{b}"
            try:
                s, n, peak, finite = seconds_per_forward(m, inputs(cfg, video, b, dev), dev, args.reps, deadline)
            except OutOfTime as e:
                log(f"{key}_skipped", f"time budget: {e}")
                continue
            except torch.cuda.OutOfMemoryError as e:
                log(f"{key}_skipped", f"out of GPU memory: {str(e)[:200]}")
                continue
            log(f"{key}_s_per_forward", s)
            log(f"{key}_runs", n)
            log(f"{key}_peak_gpu_GB", peak)
            if not finite:
                log(f"{key}_note", "output not finite (random weights); timing unaffected")
            rows.append((name, mode, b, s, peak, setup_s))

    measure("resident")

    # Group offloading: every block in (pinned) host RAM, streamed one block ahead.
    from diffusers.hooks import apply_group_offloading
    if time.perf_counter() > deadline:
        log(f"{name}_offload_skipped", "time budget spent")
        del m
        return
    try:
        t0 = time.perf_counter()
        m = m.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        use_stream = dev.type == "cuda"  # streams need CUDA; --tiny checks the hooks without
        apply_group_offloading(m, onload_device=dev, offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1,
                               use_stream=use_stream)
        setup = round(time.perf_counter() - t0, 1)
        log(f"{name}_offload_setup_s", setup)
        log(f"{name}_offload_use_stream", use_stream)
        on_gpu = sum(p.numel() for p in m.parameters() if p.device.type == "cuda")
        log(f"{name}_offload_params_on_gpu_between_forwards", on_gpu)
        with torch.inference_mode():
            out = m(**inputs(cfg, video, 1, dev))[0].float().cpu()
        diff = (out - reference).abs().nan_to_num(nan=float("inf")).max().item()
        log(f"{name}_offload_vs_resident_max_abs_diff", diff)
        measure("offload_stream" if use_stream else "offload_no_stream", setup)
    except Exception as e:  # noqa: BLE001 -- record and go on to the next shape
        log(f"{name}_offload_error", repr(e)[:400])
    del m
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def main():
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU, to check the logic")
    p.add_argument("--reps", type=int, default=3, help="timed forwards after the warm-up (median)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shapes", nargs="+", default=None, help="default: the 1.3B then the 14B shape")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="stop starting measurements after this many seconds (default 450)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="folder for wan_peer.json")
    args = p.parse_args()
    OUT = args.out
    os.makedirs(OUT, exist_ok=True)
    start = time.perf_counter()
    deadline = start + args.budget_s
    shapes = args.shapes or list((TINY_SHAPES if args.tiny else SHAPES).keys())
    video = TINY_VIDEO if args.tiny else VIDEO

    import diffusers
    try:
        import accelerate  # diffusers' group offloading moves inputs with accelerate
        log("accelerate", accelerate.__version__)
    except ImportError:
        log("accelerate", None)
        print("WARNING: accelerate is missing: diffusers' group offloading will fail", flush=True)
    log("torch", torch.__version__)
    log("diffusers", diffusers.__version__)
    log("tiny", args.tiny)
    log("video_latent", [video["frames"], video["height"], video["width"]])
    log("context_tokens", video["context"])
    log("batches", args.batches)
    if args.tiny:
        dev = torch.device("cpu")
        torch.manual_seed(0)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny to check the logic on a CPU")
        dev = torch.device("cuda:0")
        log("gpu", torch.cuda.get_device_name(dev))
        log("gpu_total_GB", gb(torch.cuda.get_device_properties(dev).total_memory))
        log("GBps_h2d_pinned", bandwidth("pinned", "cuda", 2 << 30))
        log("GBps_h2d_pageable", bandwidth("pageable", "cuda", 1 << 30, reps=3))
        log("GBps_d2h_pinned", bandwidth("cuda", "pinned", 2 << 30))

    rows = []
    for name in shapes:
        try:
            run_shape(name, args, dev, video, deadline, rows)
        except Exception as e:  # noqa: BLE001 -- record and go on to the next shape
            log(f"{name}_error", repr(e)[:400])
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    log("total_s", round(time.perf_counter() - start, 1))

    print()
    print(f"{'shape':<14} {'mode':<18} {'batch':>5} {'s/forward':>10} {'peak GB':>8} {'setup s':>8}")
    for name, mode, b, s, peak, setup in rows:
        peak_s = "-" if peak is None else f"{peak:.1f}"
        setup_s = "-" if setup is None else f"{setup:.1f}"
        print(f"{name:<14} {mode:<18} {b:>5} {s:>10.3f} {peak_s:>8} {setup_s:>8}")
    # Transfer floor of the offloaded run: all weights cross PCIe once per forward.
    if not args.tiny and "GBps_h2d_pinned" in res:
        for name in shapes:
            if f"{name}_params_B" in res:
                floor = 2 * res[f"{name}_params_B"] * 1e9 / (res["GBps_h2d_pinned"] * 1e9)
                log(f"{name}_offload_transfer_floor_s", round(floor, 3))
    print("DONE", flush=True)


OUT = "/tmp"
if __name__ == "__main__":
    main()
