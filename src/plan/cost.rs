//! The cost model: floating-point work per unit and activation memory per job, from a family's
//! architecture, the inventory's shapes and the workload. Formulas are written out in
//! `docs/planning.md`; this module is their one implementation.
//!
//! Work: a weight matrix of `P` elements applied to `T` tokens costs `2·P·T` FLOPs; attention
//! over `L` tokens of width `d` costs `4·L²·d` (QKᵀ and AV). Which tokens a weight sees is
//! family knowledge (FLUX's `img_*` weights see image tokens, `txt_*` text tokens, modulation
//! weights one vector per job). Time = FLOPs / (device bf16 matrix rate × [`EFFICIENCY`]).

use crate::family::Family;
use crate::inventory::{canonical_name, Inventory, Unit};
use crate::weights::{DType, TensorInfo};

use super::Workload;

/// Fraction of the device's bf16 matrix-product rate a whole model step reaches, for mgpu's
/// own CUDA kernels. Calibrated on one measurement (benches/RESULTS.md, H100, 2026-11-26):
/// FLUX.1-dev at 1024×1024 does 74.4 TFLOP per step and mgpu's resident step took 0.1495 s
/// on an H100 whose 8192³ product `mgpu probe --bench` measured at 760 TFLOP/s:
/// 74.4e12 / (0.1495 × 760e12) = 0.655. (diffusers' 0.183 s at 791 TFLOP/s is 0.514.)
/// Applied to every family and device.
pub const EFFICIENCY: f64 = 0.655;

/// What widening (dequantising) a unit's compact tensors to bf16 on the compute GPU costs each time the unit
/// is fetched: GB of bf16 written per second, per TFLOP/s of the device's bf16 rate (scaled
/// by the bf16 rate on other GPUs, for want of a measured memory bandwidth). Each is more than
/// the kernel's own memory traffic would take: it shares the SMs, the memory and the power
/// budget with the step's compute. Calibrated on FLUX.1-dev at 1024², batch 4, every block
/// streamed from host RAM with no stall, against the resident step of the same storage
/// (benches/RESULTS.md, lent H200, 765.7 TFLOP/s, 2026-12-04), 23.67 GB of bf16 written:
///
/// GGUF Q8_0 (`dequant_q8_0_bf16_x8`, 8 values per thread): 15.4 ms per step, 1 537 GB/s, 2.0
/// GB/s per TFLOP/s (the one-value-per-thread kernel before it: 31.7–33.2 ms, 0.96 on H100
/// and H200, 2026-11-26); scaled fp8 (`widen_fp8_bf16_x8`): 13.9 ms, 1 703 GB/s, 2.2 (one value
/// per thread: 34.3 ms). One constant for both.
pub const WIDEN_GBPS_PER_TFLOPS: f64 = 2.0;

/// `lora_mode = "on_dequant"`: scalar f32 operations per second of the LoRA terms added at a
/// widening (`dequant_lora_<type>_bf16`, no tensor cores, no fused multiply-add: exact order),
/// per TFLOP/s of the device's bf16 rate. Calibrated on the lent H200 (765.7 TFLOP/s,
/// 2026-12-04, benches/RESULTS.md): a rank-16 term on a 12 288 × 3 072 Q8_0 matrix ran its
/// 1.28 GFLOP at 7.0 TFLOP/s (10.1 at rank 64): 9.1 GFLOP/s per TFLOP/s.
pub const LORA_TERM_GFLOPS_PER_TFLOPS: f64 = 9.1;

/// fp8 compute (`dtype = "fp8"`, [`crate::models::fp8`]): how many times faster an fp8
/// linear's product runs than in bf16, the rounding of its activations to e4m3 included.
/// Calibrated on the lent H200 (benches/RESULTS.md, 2026-12-04): FLUX.1-dev at 1024², all
/// resident, the pass over the blocks took 0.1479 → 0.1155 s (batch 1) and 0.5914 → 0.4642 s
/// (batch 4); the fp8 linears are 80 % of the blocks' FLOPs (59.5 of 74.4 TFLOP), so their
/// time fell to 0.726 and 0.731 of bf16's: 1.38 and 1.37 × as fast. Wan's fp8 linears (its
/// blocks' attention projections and feed-forward) take the same factor: on Wan 2.1 14B at
/// 480p/81 frames it predicts −0.37 s per step for a measured −0.44 s (2026-12-04).
pub const FP8_LINEAR_SPEEDUP: f64 = 1.37;

/// Wan blocks on CUDA, calibrated on the lent H200 (benches/RESULTS.md, 2026-12-02, 832×480,
/// 81 frames = 32 760 tokens): self-attention runs the flash kernel at 42.4 % of the bf16
/// matrix rate (66.7 ms for the 14B block's 2.20e13 FLOPs at 778 TFLOP/s);
pub const WAN_ATTENTION_EFFICIENCY: f64 = 0.424;
/// the matrix products at FLUX's non-attention efficiency (FLUX's resident step less its
/// attention at the rate above: 0.750);
pub const WAN_GEMM_EFFICIENCY: f64 = 0.75;
/// and the element-wise work between them (norms, modulation, RoPE, residuals) costs the
/// equivalent of this many FLOPs per token and model width in each block — memory traffic,
/// not arithmetic, expressed at the products' rate (the 1.3B step,
/// 0.9865 s, less its products and attention).
pub const WAN_ELEMENTWISE_FLOPS: f64 = 91_000.0;

/// Values the Wan VAE's chunked decoder holds per output pixel of one frame (caches, the
/// chunk's activations, im2col, the output), from the measurement quoted in
/// [`Arch::activations`].
pub const WAN_VAE_VALUES_PER_PIXEL: u64 = 5_800;

/// On a CPU, seconds per attention score (one query·key pair of one head of one job) for the
/// work around the products: the f32 softmax (max, exp, sum, scale) and the products' poor
/// efficiency at head width. Calibrated on the demo (issue 14; this 2-core AMD EPYC
/// machine, 2026-12-03, measured 148 GFLOP/s f32 by `mgpu probe --bench`): the tiny FLUX
/// model (width 32, 2 heads, 4 blocks, 576 tokens) steps in 13–15 ms per image (steady
/// state, three runs) where FLOPs at the product rate predict 2.3 ms; the 11.7 ms gap over
/// 4 × 2 × 576² scores is 4.4 ns each. For FLUX.1 at 1024² on such a CPU it adds ≈ 127 s to
/// the products' ≈ 770 s per step. Only CPU compute adds it (GPUs run fused attention kernels, whose cost the
/// FLOP terms already hold).
pub const CPU_SECONDS_PER_ATTENTION_SCORE: f64 = 4.4e-9;

/// Architecture numbers the cost formulas need, read from the inventory where it has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub family: Family,
    /// Width of the residual stream.
    pub hidden: u64,
    /// Width of the MLP's hidden layer.
    pub mlp: u64,
    pub heads: u64,
    /// Image (or video) tokens per job, and text tokens.
    pub img_tokens: u64,
    pub txt_tokens: u64,
    /// Bytes per activation element.
    pub act_bytes: u64,
    /// Output pixels (VAE), all frames.
    pub pixels: u64,
    /// Frames of a video (1 for images).
    pub frames: u64,
    /// Latent channels: 16 (FLUX, Wan 2.1's VAE and the models using it), 48 (Wan 2.2's VAE
    /// and TI2V-5B).
    pub latent_channels: u64,
    /// fp8 compute ([`super::Workload::fp8_linears`]).
    pub fp8_linears: bool,
}

/// The Wan 2.2 VAE's latent width, by which the planner tells it (and TI2V-5B) from Wan 2.1's.
const WAN22_LATENT: u64 = 48;

fn dim(inv: &Inventory, name: &str, axis: usize) -> Option<u64> {
    inv.tensors
        .iter()
        .find(|t| canonical_name(inv.family, &t.name) == name)
        .and_then(|t| t.shape.get(axis).copied())
}

impl Arch {
    pub fn new(family: Family, inv: &Inventory, w: &Workload) -> Self {
        let (wd, ht) = (w.width as u64, w.height as u64);
        let latent_frames = 1 + (w.frames.max(1) as u64 - 1) / 4;
        let txt = w.text_tokens as u64;
        // Activations are computed in bf16 unless the weights are stored wider.
        let act_bytes = inv
            .tensors
            .iter()
            .max_by_key(|t| t.len)
            .map(|t| match t.dtype {
                DType::F32 => 4,
                _ => 2,
            })
            .unwrap_or(2);
        // The latent width: the DiT's output channels (its head gives out · 2 · 2 values per
        // token), the VAE's `conv2` (z → z); 16 otherwise and when absent.
        let latent_channels = match family {
            Family::Wan => dim(inv, "head.head.weight", 0).map(|n| n / 4),
            Family::WanVae => dim(inv, "conv2.weight", 0),
            _ => None,
        }
        .unwrap_or(16);
        let latent_stride = if latent_channels == WAN22_LATENT {
            16
        } else {
            8
        };
        let (hidden, mlp, heads, img_tokens, txt_tokens) = match family {
            Family::Flux => {
                let h = dim(inv, "img_in.weight", 0).unwrap_or(3072);
                let m = dim(inv, "double_blocks.0.img_mlp.0.weight", 0).unwrap_or(4 * h);
                (h, m, h / 128, (wd / 16) * (ht / 16), txt)
            }
            Family::Wan => {
                let h = dim(inv, "patch_embedding.weight", 0).unwrap_or(5120);
                let m = dim(inv, "blocks.0.ffn.0.weight", 0).unwrap_or(13824);
                // A token is a 2 × 2 patch of latent pixels: 16 × 16 image pixels through the
                // Wan 2.1 VAE, 32 × 32 through Wan 2.2's (TI2V-5B).
                let px = 2 * latent_stride;
                (h, m, h / 128, latent_frames * (wd / px) * (ht / px), txt)
            }
            Family::T5 | Family::UmT5 => {
                let h = dim(inv, "shared.weight", 1).unwrap_or(4096);
                let m = dim(inv, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0)
                    .unwrap_or(10240);
                (h, m, h / 64, 0, txt)
            }
            Family::ClipL => {
                let h = dim(inv, "text_model.embeddings.token_embedding.weight", 1).unwrap_or(768);
                let m = dim(inv, "text_model.encoder.layers.0.mlp.fc1.weight", 0).unwrap_or(4 * h);
                (h, m, h / 64, 0, 77)
            }
            Family::FluxVae | Family::WanVae => (
                512,
                0,
                1,
                (wd / latent_stride) * (ht / latent_stride) * latent_frames,
                0,
            ),
        };
        Arch {
            family,
            hidden,
            mlp,
            heads: heads.max(1),
            img_tokens,
            txt_tokens,
            act_bytes,
            frames: w.frames.max(1) as u64,
            latent_channels,
            fp8_linears: w.fp8_linears,
            pixels: wd
                * ht
                * if family == Family::WanVae {
                    w.frames.max(1) as u64
                } else {
                    1
                },
        }
    }

    /// Tokens of one sequence through the blocks.
    pub fn seq(&self) -> u64 {
        match self.family {
            Family::Flux => self.img_tokens + self.txt_tokens,
            Family::Wan | Family::FluxVae | Family::WanVae => self.img_tokens,
            _ => self.txt_tokens,
        }
    }

    /// Whether `t` is one of the family's fp8 linears and the workload computes them in fp8.
    pub fn is_fp8_linear(&self, inv: &Inventory, t: &TensorInfo) -> bool {
        self.fp8_linears && self.family.fp8_linear(&canonical_name(inv.family, &t.name))
    }

    /// FLOPs of one forward pass of `unit` for one job.
    pub fn unit_flops(&self, inv: &Inventory, unit: &Unit) -> f64 {
        let mut flops: f64 = inv
            .tensors_of(unit)
            .map(|t| self.tensor_flops(inv, t))
            .sum();
        if unit.kind == crate::inventory::UnitKind::Block {
            flops += self.attention_flops(&unit.name);
        }
        flops
    }

    /// Seconds of one forward pass of `unit` for one job on a device of `tflops` bf16
    /// TFLOP/s: FLOPs at [`EFFICIENCY`], except Wan blocks, whose self-attention, products
    /// and element-wise work have their own rates (the constants above); with fp8 compute
    /// the fp8 linears' products take 1 / [`FP8_LINEAR_SPEEDUP`] of their bf16 time.
    pub fn unit_seconds(&self, inv: &Inventory, unit: &Unit, tflops: f64) -> f64 {
        let rate = tflops * 1e12;
        let is_block = unit.kind == crate::inventory::UnitKind::Block;
        // fp8 linears' products at bf16-equivalent FLOPs: what the products save.
        let fp8_saved = inv
            .tensors_of(unit)
            .filter(|t| self.is_fp8_linear(inv, t))
            .map(|t| self.tensor_flops(inv, t))
            .sum::<f64>()
            * (1.0 - 1.0 / FP8_LINEAR_SPEEDUP);
        if self.family != Family::Wan || !is_block {
            return (self.unit_flops(inv, unit) - fp8_saved) / (rate * EFFICIENCY);
        }
        let (l, d) = (self.seq() as f64, self.hidden as f64);
        let products: f64 = inv
            .tensors_of(unit)
            .map(|t| self.tensor_flops(inv, t))
            .sum::<f64>()
            + 4.0 * l * self.txt_tokens as f64 * d
            - fp8_saved;
        let attention = 4.0 * l * l * d;
        let elementwise = WAN_ELEMENTWISE_FLOPS * l * d;
        (products + elementwise) / (rate * WAN_GEMM_EFFICIENCY)
            + attention / (rate * WAN_ATTENTION_EFFICIENCY)
    }

    /// The CPU's extra seconds for one forward pass of `unit` for one job: attention scores
    /// × [`CPU_SECONDS_PER_ATTENTION_SCORE`] (blocks of transformer families only).
    pub fn cpu_extra_seconds(&self, inv: &Inventory, unit: &Unit) -> f64 {
        if unit.kind != crate::inventory::UnitKind::Block {
            return 0.0;
        }
        // FLUX's head width is its q/k norm's (128 in FLUX.1; the tiny demo model's is 16).
        let heads = match self.family {
            Family::Flux => dim(inv, "double_blocks.0.img_attn.norm.query_norm.scale", 0)
                .filter(|&d| d > 0)
                .map(|d| (self.hidden / d).max(1))
                .unwrap_or(self.heads),
            _ => self.heads,
        };
        let l = self.seq() as f64;
        let scores = match self.family {
            Family::Flux | Family::T5 | Family::UmT5 | Family::ClipL => l * l,
            Family::Wan => l * l + l * self.txt_tokens as f64,
            _ => return 0.0,
        };
        scores * heads as f64 * CPU_SECONDS_PER_ATTENTION_SCORE
    }

    fn tensor_flops(&self, inv: &Inventory, t: &TensorInfo) -> f64 {
        let name = canonical_name(inv.family, &t.name);
        let n = name.as_ref();
        if t.shape.len() < 2 || n.ends_with(".bias") {
            return 0.0;
        }
        let params = t.numel() as f64;
        let tokens = match self.family {
            Family::Flux => {
                // Modulation and embedding MLPs act on one vector per job.
                let per_job = ["_mod.", ".modulation.", "adaLN_modulation"]
                    .iter()
                    .any(|p| n.contains(p))
                    || ["time_in.", "vector_in.", "guidance_in."]
                        .iter()
                        .any(|p| n.starts_with(p));
                if per_job {
                    1
                } else if n.starts_with("txt_in.") || n.contains(".txt_") {
                    self.txt_tokens
                } else if n.starts_with("single_blocks.") {
                    self.seq()
                } else {
                    self.img_tokens
                }
            }
            Family::Wan => {
                if n.starts_with("time_") || n.contains("modulation") {
                    1
                } else if n.starts_with("text_embedding.")
                    || n.contains("cross_attn.k.")
                    || n.contains("cross_attn.v.")
                {
                    self.txt_tokens
                } else {
                    self.img_tokens
                }
            }
            Family::T5 | Family::UmT5 | Family::ClipL => {
                // Embedding tables are looked up, not multiplied.
                if n.contains("shared.") || n.contains("embedding") {
                    0
                } else {
                    self.txt_tokens
                }
            }
            // Convolutions: each output position applies the whole kernel. Positions per
            // layer are approximated by the resolution of the layer's stage.
            Family::WanVae if self.latent_channels == WAN22_LATENT => {
                return 2.0 * params * self.wan22_vae_positions(n)
            }
            Family::FluxVae | Family::WanVae => return 2.0 * params * self.vae_positions(n),
        };
        2.0 * params * tokens as f64
    }

    /// Output positions of a VAE layer (LDM layout: `encoder.down.i` at 1/2ⁱ of the image,
    /// `decoder.up.i` likewise, `mid` and latent-side convs at 1/8).
    fn vae_positions(&self, n: &str) -> f64 {
        let full = self.pixels as f64;
        let level = |prefix: &str| -> Option<i32> {
            let rest = n.strip_prefix(prefix)?;
            rest.split('.').next()?.parse().ok()
        };
        let scale = if let Some(i) = level("encoder.down.") {
            let i = if n.contains(".downsample.") { i + 1 } else { i };
            i.min(3)
        } else if let Some(i) = level("decoder.up.") {
            let i = if n.contains(".upsample.") { i - 1 } else { i };
            i.clamp(0, 3)
        } else if n.starts_with("encoder.conv_in") || n.starts_with("decoder.conv_out") {
            0
        } else {
            3
        };
        full / 4f64.powi(scale)
    }

    /// Output positions of a Wan 2.2 VAE layer (original nesting): pixels are folded 2 × 2
    /// before `encoder.conv1` and after `decoder.head`, level `L` of the encoder runs at
    /// 1/4ᴸ of the folded pixels (its down-sampler ends it one level lower), level `L` of the
    /// decoder at 1/4^(3 − L); the latent-side layers (`conv1`, `conv2`, `middle`, the
    /// encoder's head, the decoder's `conv1`) at the latent's 1/256.
    fn wan22_vae_positions(&self, n: &str) -> f64 {
        let folded = self.pixels as f64 / 4.0;
        let level = |prefix: &str| -> Option<i32> {
            let rest = n.strip_prefix(prefix)?;
            rest.split('.').next()?.parse().ok()
        };
        let scale = if let Some(l) = level("encoder.downsamples.") {
            l.min(3)
        } else if let Some(l) = level("decoder.upsamples.") {
            (3 - l).clamp(0, 3)
        } else if n.starts_with("encoder.conv1") || n.starts_with("decoder.head") {
            0
        } else {
            3
        };
        folded / 4f64.powi(scale)
    }

    fn attention_flops(&self, unit: &str) -> f64 {
        let l = self.seq() as f64;
        let d = self.hidden as f64;
        match self.family {
            Family::Flux | Family::T5 | Family::UmT5 | Family::ClipL => 4.0 * l * l * d,
            // Self-attention over video tokens plus cross-attention to the text.
            Family::Wan => 4.0 * l * l * d + 4.0 * l * self.txt_tokens as f64 * d,
            // One single-head attention in the mid block at 1/8 resolution, width 512.
            Family::FluxVae | Family::WanVae if unit == "decoder" || unit == "encoder" => {
                4.0 * l * l * 512.0
            }
            _ => 0.0,
        }
    }

    /// Peak activation bytes while one job runs through one block, and the formula as text.
    pub fn activations(&self) -> (u64, String) {
        let (l, h, m, n, b) = (
            self.seq(),
            self.hidden,
            self.mlp,
            self.heads,
            self.act_bytes,
        );
        match self.family {
            Family::Flux | Family::T5 | Family::UmT5 | Family::ClipL => {
                // Residual stream, fused QKV/MLP projections and their outputs (8h + 3m per
                // token), plus the attention scores and their softmax held at once (2·n·L²).
                let bytes = b * (l * (8 * h + 3 * m) + 2 * n * l * l);
                (bytes, format!("{b} B × (L·(8h + 3m) + 2·heads·L²), L = {l}, h = {h}, m = {m}, heads = {n}"))
            }
            Family::Wan => {
                // Video sequences need memory-efficient attention: no L² term.
                let bytes = b * l * (12 * h + 3 * m);
                (bytes, format!("{b} B × L·(12h + 3m) (memory-efficient attention), L = {l}, h = {h}, m = {m}"))
            }
            Family::WanVae => {
                // Chunked causal decoding: one latent frame (4 output frames) at a time with
                // two cached frames per causal convolution, so memory follows the frame size,
                // not the frame count. Measured (examples/wan_vae_memory.rs, f32, 120×208):
                // 0.54 GiB above the weights for 9 and 17 frames alike = 5 800 values per
                // output pixel of one frame, in the compute dtype. The Wan 2.2 VAE (`--wan22`,
                // f32, 128×208, 2026-12-03): 0.54 and 0.57 GiB for 9 and 17 frames = 5 450 and
                // 5 750 values per pixel, under the same constant.
                let per_frame = self.pixels / self.frames.max(1);
                let bytes = self.act_bytes * WAN_VAE_VALUES_PER_PIXEL * per_frame;
                (
                    bytes,
                    format!("{b} B × {WAN_VAE_VALUES_PER_PIXEL} × pixels of one frame (chunked causal decode), pixels = {per_frame}"),
                )
            }
            Family::FluxVae => {
                // Three 128-channel full-resolution buffers in f32, and the mid-block attention
                // scores and softmax at 1/8 resolution.
                let p = self.pixels;
                let bytes = 4 * (3 * 128 * p) + 4 * 2 * l * l;
                (
                    bytes,
                    format!("4 B × (3·128·pixels + 2·L²), pixels = {p}, L = {l}"),
                )
            }
        }
    }

    /// Bytes each job of a batch keeps for the whole run on the compute device: sampler state
    /// (latents, noise, denoised: 4 latents of 16 channels — 48 for Wan 2.2 TI2V-5B — over
    /// the 4 latent pixels of each token, in f32) and conditioning.
    pub fn per_job(&self) -> u64 {
        match self.family {
            Family::Flux | Family::Wan => {
                let latents = 4 * self.latent_channels * (self.img_tokens * 4) * 4;
                latents + self.txt_tokens * 4096 * 2 + 768 * 2
            }
            Family::T5 | Family::UmT5 | Family::ClipL => self.txt_tokens * self.hidden * 2,
            Family::FluxVae | Family::WanVae => self.pixels * 3 * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::synthetic;

    /// The Wan cost model against the H200 cells of 2026-12-02 (832×480, 81 frames, one
    /// evaluation, all resident, 778.4 TFLOP/s): the 1.3B step it was calibrated on, and the
    /// 14B step measured one change earlier (before the fused bias adds, which took ≈ 0.4 s
    /// off it by the per-op timings).
    #[test]
    fn wan_steps_on_the_h200() {
        let mut w = Workload::image(832, 480);
        w.frames = 81;
        for (dim, ffn, layers, measured, tol) in [
            (1536u64, 8960u64, 30u32, 0.9865, 0.03),
            (5120, 13824, 40, 5.2016, 0.10),
        ] {
            let inv = synthetic::wan(DType::BF16, dim, ffn, layers);
            let arch = Arch::new(Family::Wan, &inv, &w);
            assert_eq!(arch.seq(), 32760);
            let step: f64 = inv
                .units
                .iter()
                .map(|u| arch.unit_seconds(&inv, u, 778.4))
                .sum();
            let err = step / measured - 1.0;
            assert!(
                err.abs() < tol,
                "{dim}: predicted {step:.3} s, measured {measured} s"
            );
        }
    }

    /// Wan 2.2 TI2V-5B at its own size (1280×704, 121 frames): the Wan 2.2 VAE's 16×
    /// compression and the 2 × 2 patch make 31 × 22 × 40 tokens, and the sampler state is
    /// 48 channels wide; its VAE's latent-side layers run at 1/256 of the pixels.
    #[test]
    fn ti2v_5b_and_the_wan22_vae_at_720p() {
        let mut w = Workload::image(1280, 704);
        w.frames = 121;
        let inv = synthetic::wan_with_latent(DType::BF16, 3072, 14336, 30, 48);
        let arch = Arch::new(Family::Wan, &inv, &w);
        assert_eq!(
            (arch.hidden, arch.heads, arch.latent_channels),
            (3072, 24, 48)
        );
        assert_eq!(arch.seq(), 31 * 22 * 40);
        assert_eq!(
            arch.per_job(),
            4 * 48 * (27280 * 4) * 4 + 512 * 4096 * 2 + 768 * 2
        );
        // The same widths with Wan 2.1's 16 channels would see 4× the tokens.
        let w21 = synthetic::wan(DType::BF16, 3072, 14336, 30);
        assert_eq!(Arch::new(Family::Wan, &w21, &w).seq(), 31 * 44 * 80);

        let vae = crate::inventory::Inventory::synthetic(
            Some(Family::WanVae),
            &[
                (
                    "conv2.weight".to_string(),
                    DType::BF16,
                    vec![48, 48, 1, 1, 1],
                ),
                (
                    "decoder.upsamples.3.upsamples.0.residual.2.weight".to_string(),
                    DType::BF16,
                    vec![256, 256, 3, 3, 3],
                ),
            ],
        );
        let a = Arch::new(Family::WanVae, &vae, &w);
        assert_eq!(a.latent_channels, 48);
        assert_eq!(a.img_tokens, 31 * 44 * 80);
        let px = (1280 * 704 * 121) as f64;
        assert_eq!(a.wan22_vae_positions("conv2.weight"), px / 256.0);
        assert_eq!(
            a.wan22_vae_positions("decoder.upsamples.3.upsamples.0.residual.2.weight"),
            px / 4.0
        );
        assert_eq!(
            a.wan22_vae_positions("encoder.downsamples.1.downsamples.0.residual.2.weight"),
            px / 16.0
        );
    }

    #[test]
    fn flux_dev_step_flops_and_calibration() {
        let inv = synthetic::flux_dev(DType::BF16);
        let arch = Arch::new(Family::Flux, &inv, &Workload::image(1024, 1024));
        assert_eq!(
            (
                arch.hidden,
                arch.mlp,
                arch.heads,
                arch.img_tokens,
                arch.txt_tokens
            ),
            (3072, 12288, 24, 4096, 512)
        );
        let total: f64 = inv.units.iter().map(|u| arch.unit_flops(&inv, u)).sum();
        assert!((total / 1e12 - 74.4).abs() < 0.05, "{}", total / 1e12);
        // The calibration measurement: 0.1495 s at 760 TFLOP/s.
        let step = total / (760e12 * EFFICIENCY);
        assert!((step - 0.1495).abs() < 0.0005, "{step}");
        // Double and single blocks do the same work: 113 M-parameter projections over the
        // joint sequence plus attention.
        let d = arch.unit_flops(&inv, inv.unit("double_blocks.0").unwrap());
        let s = arch.unit_flops(&inv, inv.unit("single_blocks.0").unwrap());
        assert!((d / s - 1.0).abs() < 0.01, "{d} {s}");
    }

    /// fp8 compute: a block's fp8 linears (FLUX's projections and MLPs, Wan's attention
    /// projections and feed-forward) take 1 / [`FP8_LINEAR_SPEEDUP`] of their bf16 time;
    /// everything else (attention, the other units) is unchanged.
    #[test]
    fn fp8_linears_run_faster_in_blocks_only() {
        let mut video = Workload::image(832, 480);
        video.frames = 81;
        for (family, inv, w, block) in [
            (
                Family::Flux,
                synthetic::flux_dev(DType::BF16),
                Workload::image(1024, 1024),
                "double_blocks.0",
            ),
            (
                Family::Wan,
                synthetic::wan(DType::BF16, 1536, 8960, 30),
                video,
                "blocks.0",
            ),
        ] {
            let bf16 = Arch::new(family, &inv, &w);
            let mut fp8_w = w;
            fp8_w.fp8_linears = true;
            let fp8 = Arch::new(family, &inv, &fp8_w);
            let unit = inv.unit(block).unwrap();
            let linears: Vec<&TensorInfo> = inv
                .tensors_of(unit)
                .filter(|t| fp8.is_fp8_linear(&inv, t))
                .collect();
            let want = if family == Family::Flux { 8 } else { 10 };
            assert_eq!(linears.len(), want, "{family}: {linears:?}");
            assert!(!linears.iter().any(|t| bf16.is_fp8_linear(&inv, t)));
            let flops: f64 = linears.iter().map(|t| bf16.tensor_flops(&inv, t)).sum();
            let eff = if family == Family::Wan {
                WAN_GEMM_EFFICIENCY
            } else {
                EFFICIENCY
            };
            let saved = flops * (1.0 - 1.0 / FP8_LINEAR_SPEEDUP) / (778e12 * eff);
            let (a, b) = (
                bf16.unit_seconds(&inv, unit, 778.0),
                fp8.unit_seconds(&inv, unit, 778.0),
            );
            assert!(
                ((a - b) / saved - 1.0).abs() < 1e-9,
                "{family}: {a} s → {b} s, expected {saved} s less"
            );
            let resident = inv.unit(crate::inventory::RESIDENT).unwrap();
            assert_eq!(
                bf16.unit_seconds(&inv, resident, 778.0),
                fp8.unit_seconds(&inv, resident, 778.0),
                "{family}: the resident unit has no fp8 linears"
            );
        }
    }

    #[test]
    fn flux_activations_at_1024() {
        let inv = synthetic::flux_dev(DType::BF16);
        let arch = Arch::new(Family::Flux, &inv, &Workload::image(1024, 1024));
        let (bytes, formula) = arch.activations();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        assert!((2.4..2.6).contains(&gib), "{gib} {formula}");
        let small = Arch::new(Family::Flux, &inv, &Workload::image(512, 512))
            .activations()
            .0;
        assert!(small * 4 < bytes, "attention is quadratic in tokens");
    }
}
