#!/usr/bin/env python3
"""Peer baseline for time to first image (issue #11): diffusers loading a full-size FLUX.1-dev
pipeline, on the GPU machine, in the same call as mgpu (tools/gpu-first-image.sh).

1. Writes a diffusers-layout folder of generated weights (`--dir`): every component's state
   dict names and shapes come from the real classes built on the meta device
   (FluxTransformer2DModel with FLUX.1-dev's config, AutoencoderKL with its VAE config,
   CLIPTextModel ViT-L/14, T5EncoderModel v1.1 XXL), written as sparse all-zero bf16
   safetensors (reads come from the page cache, as for mgpu's files), with the configs,
   the parity fixtures' small tokenizers, the scheduler config and model_index.json.
2. In a fresh process per mode (peak RSS is per process), after the files are in the page
   cache:
     resident  FluxPipeline.from_pretrained(dir, torch_dtype=bf16), .to("cuda"), then one call
               of 4 images at 1024², 20 steps (as mgpu's runs), timed separately;
     group     from_pretrained, then the transformer's block-level group offloading with
               stream prefetch (diffusers' fastest offload; every block homed in host RAM),
               the other components .to("cuda"); the setup time, then the same call.
It writes $OUT/peer.json after every measurement and prints a table.

Needs torch (the machine has it), transformers and accelerate (it has them) and diffusers
(carry its wheel: .carry/wheels/diffusers-*.whl, installed by gpu-first-image.sh).
"""
import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("OUT", "/tmp")
FX = os.path.join(ROOT, "tests", "fixtures", "parity", "text")

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX_VAE = dict(in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024,
                scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)


def write_sparse(path, shapes):
    """shapes: name -> list; bf16 zeros, sparse."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(shapes):
        n = 2
        for d in shapes[name]:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.truncate(8 + len(h) + off)
    return off


def shapes_of(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def build(d):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config,
                              T5EncoderModel, T5TokenizerFast)
    if os.path.exists(os.path.join(d, "model_index.json")):
        return
    os.makedirs(d, exist_ok=True)
    total = 0
    with torch.device("meta"):
        tr = FluxTransformer2DModel(**FLUX_DEV)
        vae = AutoencoderKL(**FLUX_VAE)
        clip_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                  num_hidden_layers=12, num_attention_heads=12,
                                  max_position_embeddings=77, hidden_act="quick_gelu",
                                  projection_dim=768)
        clip = CLIPTextModel(clip_cfg)
        t5_cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                          num_heads=64, relative_attention_num_buckets=32,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        t5 = T5EncoderModel(t5_cfg)
    for sub, m, fname in (("transformer", tr, "diffusion_pytorch_model.safetensors"),
                          ("vae", vae, "diffusion_pytorch_model.safetensors")):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
        m.save_config(os.path.join(d, sub))
        total += write_sparse(os.path.join(d, sub, fname), shapes_of(m))
    for sub, m, cfg in (("text_encoder", clip, clip_cfg), ("text_encoder_2", t5, t5_cfg)):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
        cfg.torch_dtype = "bfloat16"
        cfg.save_pretrained(os.path.join(d, sub))
        total += write_sparse(os.path.join(d, sub, "model.safetensors"), shapes_of(m))
    # model_max_length as the real tokenizers have it (the pipeline pads to it).
    CLIPTokenizer(os.path.join(FX, "clip-vocab.json"), os.path.join(FX, "clip-merges.txt"),
                  model_max_length=77).save_pretrained(os.path.join(d, "tokenizer"))
    T5TokenizerFast(tokenizer_file=os.path.join(FX, "t5-tokenizer.json"),
                    model_max_length=512).save_pretrained(os.path.join(d, "tokenizer_2"))
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                    max_shift=1.15, base_image_seq_len=256,
                                    max_image_seq_len=4096
                                    ).save_pretrained(os.path.join(d, "scheduler"))
    import diffusers
    index = {"_class_name": "FluxPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    json.dump(index, open(os.path.join(d, "model_index.json"), "w"), indent=1)
    print(f"wrote {d}: {total / 1e9:.2f} GB of weights (sparse zeros)", flush=True)


def measure(d, mode, gen):
    import torch
    from diffusers import FluxPipeline
    rec = {"mode": mode}
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(d, torch_dtype=torch.bfloat16)
    rec["from_pretrained_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    if mode == "resident":
        pipe.to("cuda")
    else:
        pipe.transformer.enable_group_offload(
            onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
            offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        for c in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
            c.to("cuda")
    torch.cuda.synchronize()
    rec["to_device_s"] = round(time.perf_counter() - t1, 2)
    rec["load_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(rec), flush=True)  # the load stands even if generating fails
    if gen:
        t2 = time.perf_counter()
        try:
            pipe("a red fox in snow, golden hour, 85mm photograph", height=1024, width=1024,
                 num_inference_steps=20, guidance_scale=3.5, num_images_per_prompt=4,
                 max_sequence_length=512, generator=torch.Generator("cpu").manual_seed(42))
            torch.cuda.synchronize()
            rec["generate_s"] = round(time.perf_counter() - t2, 2)
            rec["first_image_s"] = round(time.perf_counter() - t0, 2)
        except Exception as e:
            rec["generate_error"] = f"{type(e).__name__}: {e}"[:500]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rec["max_rss_gib"] = round(ru.ru_maxrss / 2**20, 2)
    rec["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/first-image/diffusers")
    ap.add_argument("--mode", choices=["resident", "group"])
    ap.add_argument("--no-gen", action="store_true", help="load only, no images")
    a = ap.parse_args()
    if a.mode:
        return measure(a.dir, a.mode, not a.no_gen)
    res = {}
    path = os.path.join(OUT, "peer.json")
    try:
        import diffusers, torch, transformers
        res["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__}
        t = time.perf_counter()
        build(a.dir)
        res["build_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:  # the mgpu numbers of the same call still stand
        res["error"] = f"building the diffusers folder: {type(e).__name__}: {e}"
        json.dump(res, open(path, "w"), indent=1)
        print(res["error"])
        return
    files = [os.path.join(r, f) for r, _, fs in os.walk(a.dir) for f in fs
             if f.endswith(".safetensors")]
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL)  # into the page cache
    for mode in ("resident", "group"):
        p = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--mode", mode]
                           + (["--no-gen"] if a.no_gen else []),
                           capture_output=True, text=True)
        try:
            res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception:
            res[mode] = {"error": (p.stderr or p.stdout)[-2000:]}
        json.dump(res, open(path, "w"), indent=1)
        print(mode, json.dumps(res[mode]), flush=True)


if __name__ == "__main__":
    main()
