//! T5 v1.1 encoder (FLUX's T5-XXL text encoder; umT5 for Wan via one flag), block-structured.
//!
//! Follows transformers' `T5EncoderModel` (`models/t5/modeling_t5.py`, 5.24) and the file
//! layout of ComfyUI's `t5xxl_fp16.safetensors` / diffusers' `text_encoder_2`:
//! `shared.weight` (and/or the tied duplicate `encoder.embed_tokens.weight`),
//! `encoder.block.N.layer.0.{SelfAttention.{q,k,v,o},layer_norm}.weight`,
//! `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`,
//! `encoder.block.N.layer.1.{DenseReluDense.{wi_0,wi_1,wo},layer_norm}.weight`,
//! `encoder.final_layer_norm.weight`.
//!
//! Architecture: token embedding (no scaling); per block, pre-norm (RMS, no bias, no mean)
//! self-attention *without* `1/√d` scaling plus a learned relative-position bias (computed by
//! block 0 and shared by all blocks in T5 v1.1, per block in umT5), then a pre-norm gated-GELU
//! feed-forward (`wo(gelu_tanh(wi_0 x) · wi_1 x)`); a final RMS norm.
//!
//! Attention mask: FLUX encodes the padded 512 (dev) / 256 (schnell) tokens without one, as
//! diffusers' `FluxPipeline` and ComfyUI do ([`T5Encoder::prepare`]). Wan encodes its umT5 prompt
//! padded to 512 *with* a mask and zeroes the padded rows of the result (Wan 2.1
//! `wan/modules/t5.py` + `wan/text2video.py`, diffusers' `WanPipeline._get_t5_prompt_embeds`,
//! ComfyUI's `zero_out_masked`): [`T5Encoder::prepare_masked`] adds −∞ to the attention scores of
//! padded keys (after the position bias, as transformers' `UMT5EncoderModel` adds its extended
//! mask), and [`T5Encoder::finish`] then zeroes rows ≥ `valid_len`. Since a masked key is
//! invisible and the bias depends only on relative positions, the valid rows equal an unpadded
//! encoding of the first `valid_len` tokens (tested).
//!
//! Contract (see [`crate::models`]): the embedding and final norm are resident
//! ([`T5Encoder::new`]); each `encoder.block.N` is built at run time from a `VarBuilder` over
//! that unit's tensors, named relative to the unit (`layer.0.SelfAttention.q.weight`), by
//! [`T5Encoder::run_unit`]. One prompt at a time.
//!
//! Precision: the compute dtype is the `VarBuilder`s' dtype. The residual stream, every RMS
//! norm and every softmax are kept in f32 whatever it is, and the output is f32. T5 activations
//! exceed f16's range (±65504) in the feed-forward; transformers therefore keeps `wo` in f32
//! for f16 checkpoints (`_keep_in_fp32_modules = ["wo"]`, which also promotes its residual
//! stream to f32), and ComfyUI runs T5 in the text-encoder dtype with the same kind of f32
//! islands. We do the same: in f16, the gate product and `wo` run in f32. Recommended: f32 on
//! CPU (bit-for-bit the reference computation), bf16 on GPU (f32's range, half the bytes); f16
//! works but is the least accurate.

use candle_core::{bail, DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// Hyper-parameters, named as in transformers' `T5Config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Rows of the token embedding (32128 for T5-XXL: 32100 tokens, padded).
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// umT5: every block has its own `relative_attention_bias`; T5 v1.1: block 0's is shared.
    pub per_layer_position_bias: bool,
}

impl Config {
    /// `google/t5-v1_1-xxl`'s encoder (config.json), as shipped for FLUX in
    /// `t5xxl_fp16.safetensors` and `black-forest-labs/FLUX.1-dev/text_encoder_2`.
    pub fn xxl() -> Self {
        Config {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            per_layer_position_bias: false,
        }
    }

    /// `google/umt5-xxl`'s encoder (Wan 2.x's text encoder): T5-XXL's shape, a 256384-token
    /// vocabulary and a relative-position bias in every block.
    pub fn umt5_xxl() -> Self {
        Config {
            vocab_size: 256384,
            per_layer_position_bias: true,
            ..Self::xxl()
        }
    }

    /// The demo's tiny umT5 (Wan's text encoder in miniature): [`Config::tiny`]'s widths, a
    /// position bias in every block, sized for [`crate::models::tokenize::tiny::umt5`].
    pub fn tiny_umt5() -> Self {
        Config {
            vocab_size: crate::models::tokenize::tiny::UMT5_VOCAB,
            per_layer_position_bias: true,
            ..Self::tiny()
        }
    }

    /// The demo's tiny T5 (`mgpu make-tiny`): two blocks of width 32, sized for the tiny
    /// tokenizer of [`crate::models::tokenize::tiny::t5`].
    pub fn tiny() -> Self {
        Config {
            vocab_size: crate::models::tokenize::tiny::T5_VOCAB,
            d_model: 32,
            d_kv: 8,
            d_ff: 48,
            num_layers: 2,
            num_heads: 4,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            per_layer_position_bias: false,
        }
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    fn has_position_bias(&self, block: usize) -> bool {
        block == 0 || self.per_layer_position_bias
    }
}

/// Placement units in execution order: `encoder.block.0` … (as [`crate::family::Family::T5`]
/// names them).
pub fn units(cfg: &Config) -> Vec<String> {
    (0..cfg.num_layers)
        .map(|i| format!("encoder.block.{i}"))
        .collect()
}

/// The token-embedding names a T5 file may carry: ComfyUI's and transformers' files have
/// `shared.weight`; some also keep `encoder.embed_tokens.weight`, a tied copy of it. With both,
/// [`T5Encoder::new`] reads only `shared.weight`: the executor need not load the copy.
pub const EMBEDDING_NAMES: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];

/// transformers' `T5Attention._relative_position_bucket` for the bidirectional encoder:
/// `relative_position` = key position − query position. Half the buckets for each sign; of
/// those, exact buckets below `num_buckets/4`, then logarithmic up to `max_distance`. The
/// logarithm is taken in f32 as PyTorch does, so bucket edges agree exactly.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative_position > 0 { half } else { 0 };
    let n = relative_position.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let log_ratio = (n as f32 / max_exact as f32).ln();
        let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let large = max_exact + (log_ratio / scale * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as u32
}

/// `x / √(mean(x²) + ε)` in f32, then cast to `dtype` and scaled by `weight` (as transformers'
/// `T5LayerNorm`).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, dtype: DType) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.to_dtype(dtype)?.broadcast_mul(&weight.to_dtype(dtype)?)
}

struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Option<Tensor>,
    attn_norm: Tensor,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
    ff_norm: Tensor,
}

impl Block {
    /// `vb` is over one `encoder.block.N` unit, names relative to it.
    fn new(cfg: &Config, index: usize, vb: VarBuilder) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        let attn = vb.pp("layer.0");
        let sa = attn.pp("SelfAttention");
        let lin = |vb: &VarBuilder, name: &str, i: usize, o: usize| {
            candle_nn::linear_no_bias(i, o, vb.pp(name))
        };
        let relative_attention_bias = if cfg.has_position_bias(index) {
            Some(sa.get(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "relative_attention_bias.weight",
            )?)
        } else {
            None
        };
        let ff = vb.pp("layer.1");
        let dense = ff.pp("DenseReluDense");
        // f16 cannot hold T5's feed-forward activations: keep `wo` in f32 (transformers'
        // `_keep_in_fp32_modules`).
        let wo = if vb.dtype() == DType::F16 {
            Linear::new(
                dense.get_with_hints_dtype(
                    (d, cfg.d_ff),
                    "wo.weight",
                    Init::Const(0.),
                    DType::F32,
                )?,
                None,
            )
        } else {
            lin(&dense, "wo", cfg.d_ff, d)?
        };
        Ok(Block {
            q: lin(&sa, "q", d, inner)?,
            k: lin(&sa, "k", d, inner)?,
            v: lin(&sa, "v", d, inner)?,
            o: lin(&sa, "o", inner, d)?,
            relative_attention_bias,
            attn_norm: attn.get(d, "layer_norm.weight")?,
            wi_0: lin(&dense, "wi_0", d, cfg.d_ff)?,
            wi_1: lin(&dense, "wi_1", d, cfg.d_ff)?,
            wo,
            ff_norm: ff.get(d, "layer_norm.weight")?,
        })
    }

    /// The `[1, heads, L, L]` bias from this block's table.
    fn position_bias(&self, cfg: &Config, table: &Tensor, len: usize) -> Result<Tensor> {
        let mut buckets = Vec::with_capacity(len * len);
        for q in 0..len as i64 {
            for k in 0..len as i64 {
                buckets.push(relative_position_bucket(
                    k - q,
                    cfg.relative_attention_num_buckets,
                    cfg.relative_attention_max_distance,
                ));
            }
        }
        let buckets = Tensor::from_vec(buckets, len * len, table.device())?;
        let bias = table.index_select(&buckets, 0)?; // [L·L, heads]
        bias.reshape((len, len, cfg.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    fn forward(&self, cfg: &Config, state: &mut State, dtype: DType) -> Result<()> {
        let (_, len, _) = state.hidden.dims3()?;
        let (h, dk) = (cfg.num_heads, cfg.d_kv);
        if let Some(table) = &self.relative_attention_bias {
            state.position_bias = Some(self.position_bias(cfg, table, len)?);
        }
        let Some(bias) = &state.position_bias else {
            bail!("T5: encoder.block.0 must run before the other blocks (it computes the position bias)");
        };

        // Self-attention (no 1/√d scaling in T5).
        let x = rms_norm(
            &state.hidden,
            &self.attn_norm,
            cfg.layer_norm_epsilon,
            dtype,
        )?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((1, len, h, dk))?.transpose(1, 2)?.contiguous() // [1, h, L, dk]
        };
        let q = heads(self.q.forward(&x)?)?;
        let k = heads(self.k.forward(&x)?)?;
        let v = heads(self.v.forward(&x)?)?;
        let mut scores = q.matmul(&k.t()?)?.broadcast_add(bias)?; // [1, h, L, L]
        if let Some(mask) = &state.mask {
            scores = scores.broadcast_add(mask)?; // −∞ at padded keys
        }
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((1, len, h * dk))?; // [1, L, h·dk]
        let out = self.o.forward(&attn)?;
        state.hidden = (&state.hidden + out.to_dtype(DType::F32)?)?;

        // Gated-GELU feed-forward.
        let x = rms_norm(&state.hidden, &self.ff_norm, cfg.layer_norm_epsilon, dtype)?;
        let gate = crate::models::act::gelu_tanh(&self.wi_0.forward(&x)?)?;
        let lin = self.wi_1.forward(&x)?;
        let out = if dtype == DType::F16 {
            let prod = (gate.to_dtype(DType::F32)? * lin.to_dtype(DType::F32)?)?;
            self.wo.forward(&prod)?
        } else {
            self.wo.forward(&(gate * lin)?)?
        };
        state.hidden = (&state.hidden + out.to_dtype(DType::F32)?)?;
        Ok(())
    }
}

/// One prompt's activations between units.
#[derive(Debug, Clone)]
pub struct State {
    /// Residual stream `[1, L, d_model]`, f32.
    hidden: Tensor,
    /// `[1, heads, L, L]` in the compute dtype, once block 0 (or, in umT5, the current block)
    /// has made it.
    position_bias: Option<Tensor>,
    /// Masked encoding ([`T5Encoder::prepare_masked`]): `[1, 1, 1, L]` in the compute dtype, 0
    /// for the first `valid_len` keys and −∞ after; `None` when nothing is masked.
    mask: Option<Tensor>,
    /// Masked encoding: rows ≥ this are zeroed by [`T5Encoder::finish`].
    valid_len: Option<usize>,
    /// The unit `run_unit` expects next.
    next: usize,
}

/// The resident part of a T5 encoder: token embedding and final norm.
#[derive(Debug, Clone)]
pub struct T5Encoder {
    cfg: Config,
    embedding: Tensor,
    final_norm: Tensor,
    dtype: DType,
    device: Device,
}

impl T5Encoder {
    /// `vb` holds the resident tensors under their full names (`shared.weight` or
    /// `encoder.embed_tokens.weight`, `encoder.final_layer_norm.weight`) on the compute device;
    /// its dtype is the compute dtype.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let shape = (cfg.vocab_size, cfg.d_model);
        let [shared, tied] = EMBEDDING_NAMES;
        // With both present, `shared.weight` is used and its tied copy is not read at all
        // (reading it through a `VarBuilder` would convert a 0.5 GB copy for nothing).
        let embedding = if vb.contains_tensor(shared) {
            vb.get(shape, shared)?
        } else if vb.contains_tensor(tied) {
            vb.get(shape, tied)?
        } else {
            bail!(
                "T5 weights have no token embedding: expected `{shared}` or `{tied}` [{}, {}]",
                cfg.vocab_size,
                cfg.d_model
            )
        };
        let final_norm = vb.get(cfg.d_model, "encoder.final_layer_norm.weight")?;
        Ok(T5Encoder {
            cfg: cfg.clone(),
            embedding,
            final_norm,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Placement units in execution order.
    pub fn units(&self) -> Vec<String> {
        units(&self.cfg)
    }

    /// Embeds one prompt's token ids (`[L]`, as [`crate::models::tokenize::T5Tokenizer`]
    /// returns them).
    pub fn prepare(&self, ids: &[u32]) -> Result<State> {
        if ids.is_empty() {
            bail!("T5: no tokens to encode (a tokenized prompt has at least `</s>`)");
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            bail!("T5: token id {bad} is outside the embedding (vocab_size {}): tokenizer and weights do not match", self.cfg.vocab_size);
        }
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        let hidden = self
            .embedding
            .index_select(&ids, 0)?
            .unsqueeze(0)?
            .to_dtype(DType::F32)?;
        Ok(State {
            hidden,
            position_bias: None,
            mask: None,
            valid_len: None,
            next: 0,
        })
    }

    /// Embeds one padded prompt (`[L]` ids) for masked encoding, as Wan does with umT5: only the
    /// first `valid_len` tokens (the prompt and its `</s>`, [`crate::models::tokenize::Encoded::valid_len`])
    /// are attended to, and [`Self::finish`] zeroes the rows after them. `valid_len` must be in
    /// `1..=L`; with `valid_len == L` nothing is masked.
    pub fn prepare_masked(&self, ids: &[u32], valid_len: usize) -> Result<State> {
        if valid_len == 0 || valid_len > ids.len() {
            bail!(
                "T5: valid length {valid_len} must be between 1 and the {} token ids",
                ids.len()
            );
        }
        let mut state = self.prepare(ids)?;
        let len = ids.len();
        if valid_len < len {
            let mask: Vec<f32> = (0..len)
                .map(|i| {
                    if i < valid_len {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            state.mask =
                Some(Tensor::from_vec(mask, (1, 1, 1, len), &self.device)?.to_dtype(self.dtype)?);
        }
        state.valid_len = Some(valid_len);
        Ok(state)
    }

    /// Builds block `index` from `vb` (that unit's tensors, names relative to the unit, on the
    /// compute device, in the compute dtype) and runs it. Units run in order.
    pub fn run_unit(&self, index: usize, vb: VarBuilder, state: &mut State) -> Result<()> {
        if index != state.next || index >= self.cfg.num_layers {
            bail!(
                "T5: units run in order: expected encoder.block.{}, got encoder.block.{index} ({} blocks)",
                state.next,
                self.cfg.num_layers
            );
        }
        if vb.dtype() != self.dtype {
            bail!(
                "T5: encoder.block.{index} is {:?}, the resident weights {:?}: one compute dtype",
                vb.dtype(),
                self.dtype
            );
        }
        Block::new(&self.cfg, index, vb)?.forward(&self.cfg, state, self.dtype)?;
        state.next += 1;
        Ok(())
    }

    /// The final norm: hidden states `[1, L, d_model]`, f32 (what FLUX takes as `txt`). For a
    /// masked state ([`Self::prepare_masked`]) rows ≥ `valid_len` are zeros (what Wan takes as
    /// its text context).
    pub fn finish(&self, state: State) -> Result<Tensor> {
        if state.next != self.cfg.num_layers {
            bail!(
                "T5: finish after {} of {} blocks",
                state.next,
                self.cfg.num_layers
            );
        }
        let out = rms_norm(
            &state.hidden,
            &self.final_norm,
            self.cfg.layer_norm_epsilon,
            DType::F32,
        )?;
        match state.valid_len {
            Some(valid) if valid < out.dim(1)? => {
                let (b, len, d) = out.dims3()?;
                let zeros = Tensor::zeros((b, len - valid, d), DType::F32, out.device())?;
                Tensor::cat(&[out.narrow(1, 0, valid)?, zeros], 1) // [1, L, d]
            }
            _ => Ok(out),
        }
    }

    /// The whole encoder, asking `blocks(i)` for each unit's `VarBuilder` in turn.
    pub fn forward<'a>(
        &self,
        ids: &[u32],
        blocks: &mut dyn FnMut(usize) -> Result<VarBuilder<'a>>,
    ) -> Result<Tensor> {
        let mut state = self.prepare(ids)?;
        for i in 0..self.cfg.num_layers {
            self.run_unit(i, blocks(i)?, &mut state)?;
        }
        self.finish(state)
    }
}

/// Every tensor of a T5 encoder file in the canonical layout, with its shape (`shared.weight`
/// for the embedding).
pub fn tensor_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
    let mut out = vec![("shared.weight".to_string(), vec![cfg.vocab_size, d])];
    for (i, unit) in units(cfg).iter().enumerate() {
        let sa = format!("{unit}.layer.0.SelfAttention");
        for (n, s) in [
            ("q", [inner, d]),
            ("k", [inner, d]),
            ("v", [inner, d]),
            ("o", [d, inner]),
        ] {
            out.push((format!("{sa}.{n}.weight"), s.to_vec()));
        }
        if cfg.has_position_bias(i) {
            out.push((
                format!("{sa}.relative_attention_bias.weight"),
                vec![cfg.relative_attention_num_buckets, cfg.num_heads],
            ));
        }
        out.push((format!("{unit}.layer.0.layer_norm.weight"), vec![d]));
        let dense = format!("{unit}.layer.1.DenseReluDense");
        for (n, s) in [("wi_0", [ff, d]), ("wi_1", [ff, d]), ("wo", [d, ff])] {
            out.push((format!("{dense}.{n}.weight"), s.to_vec()));
        }
        out.push((format!("{unit}.layer.1.layer_norm.weight"), vec![d]));
    }
    out.push(("encoder.final_layer_norm.weight".into(), vec![d]));
    out
}

/// Deterministic random weights for the tiny demo T5 ([`Config::tiny`]), in the real layout,
/// f32 on the CPU; the same `seed` gives the same values everywhere.
pub fn tiny_weights(seed: u64) -> Result<Vec<(String, Tensor)>> {
    seeded_weights(&Config::tiny(), seed)
}

/// [`tiny_weights`] for the tiny umT5 ([`Config::tiny_umt5`]): a bias table in every block.
pub fn tiny_umt5_weights(seed: u64) -> Result<Vec<(String, Tensor)>> {
    seeded_weights(&Config::tiny_umt5(), seed)
}

fn seeded_weights(cfg: &Config, seed: u64) -> Result<Vec<(String, Tensor)>> {
    tensor_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| Ok((name.clone(), super::seeded::weight(seed, &name, &shape)?)))
        .collect()
}

#[cfg(test)]
mod tests;
