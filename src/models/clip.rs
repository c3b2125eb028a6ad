//! CLIP text encoder (FLUX's CLIP-L), block-structured.
//!
//! Follows transformers' `CLIPTextModel` (`models/clip/modeling_clip.py`, 5.24) and the layout of
//! ComfyUI's `clip_l.safetensors` / diffusers' `text_encoder`:
//! `text_model.embeddings.{token_embedding,position_embedding}.weight`,
//! `text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,layer_norm1,layer_norm2,mlp.fc1,mlp.fc2}.{weight,bias}`,
//! `text_model.final_layer_norm.{weight,bias}`, and, when present, `text_projection.weight`
//! and the old `text_model.embeddings.position_ids` buffer.
//!
//! Architecture: token + learned position embeddings; per layer, pre-LayerNorm causal
//! self-attention (scaled by `1/√head_dim`) and a pre-LayerNorm MLP with `quick_gelu`
//! (`x·σ(1.702x)`); a final LayerNorm. No padding mask: FLUX pads with `<|endoftext|>` and,
//! like diffusers' `FluxPipeline` and ComfyUI, passes no attention mask; causality keeps the
//! padding from reaching the tokens before it.
//!
//! Outputs ([`ClipOutput`]): `hidden` = `last_hidden_state` (after the final LayerNorm);
//! `pooled` = `pooler_output`: `hidden` at the first `<|endoftext|>` — what FLUX takes as its
//! `y`/`pooled_projections`, *without* `text_projection` (FluxPipeline uses
//! `CLIPTextModel(...).pooler_output`; ComfyUI's FLUX CLIP-L likewise returns the unprojected
//! pooled output). transformers picks the position as `argmax(ids)` when the config's
//! `eos_token_id` is the legacy 2 (FLUX's and openai's configs) and as the first
//! `eos_token_id` otherwise; with CLIP's vocabulary, where `<|endoftext|>` (49407) is the largest
//! id, both are the first `<|endoftext|>`, which is the rule used here. `projected` =
//! `text_projection(pooled)` (SD3/SDXL's `text_embeds`) when the file has the projection.
//!
//! Contract (see [`crate::models`]): embeddings, final norm and projection are resident
//! ([`ClipTextModel::new`]); each `text_model.encoder.layers.N` is built at run time from a
//! `VarBuilder` over that unit's tensors, names relative to the unit, by
//! [`ClipTextModel::run_unit`]. One prompt at a time. The compute dtype is the `VarBuilder`s'
//! dtype; softmax runs in f32; outputs are f32.

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// The MLP's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x·σ(1.702x)`: OpenAI CLIP (CLIP-L).
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP models such as SDXL's CLIP-G.
    Gelu,
}

/// Hyper-parameters, named as in transformers' `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    /// `<|endoftext|>`'s id: the pooled output is taken at its first occurrence.
    pub eos_token_id: u32,
}

impl Config {
    /// `openai/clip-vit-large-patch14`'s text model (its `text_config`), as shipped for FLUX in
    /// `clip_l.safetensors` and `black-forest-labs/FLUX.1-dev/text_encoder`.
    pub fn vit_l_14() -> Self {
        Config {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            eos_token_id: 49407,
        }
    }

    /// The demo's tiny CLIP (`mgpu make-tiny`): two layers of width 32, 77 positions, sized for
    /// the tiny tokenizer of [`crate::models::tokenize::tiny::clip`].
    pub fn tiny() -> Self {
        let vocab = crate::models::tokenize::tiny::CLIP_VOCAB;
        Config {
            vocab_size: vocab,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            eos_token_id: vocab as u32 - 1,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Placement units in execution order: `text_model.encoder.layers.0` … (as
/// [`crate::family::Family::ClipL`] names them).
pub fn units(cfg: &Config) -> Vec<String> {
    (0..cfg.num_hidden_layers)
        .map(|i| format!("text_model.encoder.layers.{i}"))
        .collect()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    /// `vb` is over one `text_model.encoder.layers.N` unit, names relative to it.
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        let ln = |name: &str| candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp(name));
        Ok(Layer {
            q: candle_nn::linear(d, d, attn.pp("q_proj"))?,
            k: candle_nn::linear(d, d, attn.pp("k_proj"))?,
            v: candle_nn::linear(d, d, attn.pp("v_proj"))?,
            out: candle_nn::linear(d, d, attn.pp("out_proj"))?,
            norm1: ln("layer_norm1")?,
            norm2: ln("layer_norm2")?,
            fc1: candle_nn::linear(d, ff, mlp.pp("fc1"))?,
            fc2: candle_nn::linear(ff, d, mlp.pp("fc2"))?,
        })
    }

    fn forward(&self, cfg: &Config, x: &Tensor, causal: &Tensor) -> Result<Tensor> {
        let (_, len, d) = x.dims3()?;
        let (h, hd) = (cfg.num_attention_heads, cfg.head_dim());
        let dtype = x.dtype();

        let y = self.norm1.forward(x)?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((1, len, h, hd))?.transpose(1, 2)?.contiguous() // [1, h, L, hd]
        };
        let q = heads((self.q.forward(&y)? * (hd as f64).powf(-0.5))?)?;
        let k = heads(self.k.forward(&y)?)?;
        let v = heads(self.v.forward(&y)?)?;
        let scores = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(causal)?; // [1, h, L, L]
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((1, len, d))?; // [1, L, d]
        let x = (x + self.out.forward(&attn)?)?;

        let y = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let y = match cfg.hidden_act {
            Activation::QuickGelu => (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?,
            Activation::Gelu => y.gelu_erf()?,
        };
        x + self.fc2.forward(&y)?
    }
}

/// One prompt's activations between units.
#[derive(Debug, Clone)]
pub struct State {
    /// `[1, L, hidden]` in the compute dtype.
    hidden: Tensor,
    /// `[L, L]` f32: 0 on and below the diagonal, −∞ above.
    causal: Tensor,
    /// Where the pooled output is taken.
    eos_position: usize,
    next: usize,
}

/// What the text model returns for one prompt.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `last_hidden_state`: `[1, L, hidden]`, f32.
    pub hidden: Tensor,
    /// `pooler_output`: `[1, hidden]`, f32 — FLUX's pooled text vector.
    pub pooled: Tensor,
    /// `text_projection(pooled)`: `[1, projection_dim]`, f32, when the file has the projection.
    pub projected: Option<Tensor>,
}

/// The resident part of a CLIP text model.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    cfg: Config,
    token_embedding: Tensor,
    position_embedding: Tensor,
    final_norm: LayerNorm,
    projection: Option<Tensor>,
    dtype: DType,
    device: Device,
}

impl ClipTextModel {
    /// `vb` holds the resident tensors under their full names (`text_model.embeddings.*`,
    /// `text_model.final_layer_norm.*`, optional `text_projection.weight`) on the compute
    /// device; its dtype is the compute dtype.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let token_embedding = emb.get((cfg.vocab_size, d), "token_embedding.weight")?;
        let position_embedding = emb.get(
            (cfg.max_position_embeddings, d),
            "position_embedding.weight",
        )?;
        // Older exports keep the `position_ids` buffer; it must be 0..max_position_embeddings.
        if emb.contains_tensor("position_ids") {
            let ids = emb
                .get_unchecked_dtype("position_ids", DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let ok = ids.len() == cfg.max_position_embeddings
                && ids.iter().enumerate().all(|(i, &v)| v == i as f32);
            if !ok {
                bail!(
                    "CLIP: text_model.embeddings.position_ids should be 0..{} ({} values found)",
                    cfg.max_position_embeddings,
                    ids.len()
                );
            }
        }
        let final_norm = candle_nn::layer_norm(d, cfg.layer_norm_eps, tm.pp("final_layer_norm"))?;
        let projection = if vb.contains_tensor("text_projection.weight") {
            let p = vb.get_unchecked("text_projection.weight")?;
            match p.dims() {
                [_, i] if *i == d => Some(p),
                dims => bail!("CLIP: text_projection.weight has shape {dims:?}, expected [projection_dim, {d}]"),
            }
        } else {
            None
        };
        Ok(ClipTextModel {
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            final_norm,
            projection,
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

    /// Embeds one prompt's token ids (`[L]`, L ≤ 77, as [`crate::models::tokenize::ClipTokenizer`]
    /// returns them).
    pub fn prepare(&self, ids: &[u32]) -> Result<State> {
        let len = ids.len();
        if len == 0 || len > self.cfg.max_position_embeddings {
            bail!(
                "CLIP: {len} tokens; the text model takes 1 to {}",
                self.cfg.max_position_embeddings
            );
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            bail!("CLIP: token id {bad} is outside the embedding (vocab_size {}): tokenizer and weights do not match", self.cfg.vocab_size);
        }
        // First <|endoftext|>; without one, transformers' legacy rule (the largest id).
        let eos_position = ids
            .iter()
            .position(|&i| i == self.cfg.eos_token_id)
            .unwrap_or_else(|| {
                let max = ids.iter().copied().max().unwrap_or(0);
                ids.iter().position(|&i| i == max).unwrap_or(0)
            });
        let t = Tensor::from_slice(ids, len, &self.device)?;
        let tokens = self.token_embedding.index_select(&t, 0)?;
        let positions = self.position_embedding.narrow(0, 0, len)?;
        let hidden = (tokens + positions)?.unsqueeze(0)?; // [1, L, d]
        let mask: Vec<f32> = (0..len)
            .flat_map(|q| (0..len).map(move |k| if k > q { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let causal = Tensor::from_vec(mask, (len, len), &self.device)?;
        Ok(State {
            hidden,
            causal,
            eos_position,
            next: 0,
        })
    }

    /// Builds layer `index` from `vb` (that unit's tensors, names relative to the unit, on the
    /// compute device, in the compute dtype) and runs it. Units run in order.
    pub fn run_unit(&self, index: usize, vb: VarBuilder, state: &mut State) -> Result<()> {
        if index != state.next || index >= self.cfg.num_hidden_layers {
            bail!(
                "CLIP: units run in order: expected text_model.encoder.layers.{}, got text_model.encoder.layers.{index} ({} layers)",
                state.next,
                self.cfg.num_hidden_layers
            );
        }
        if vb.dtype() != self.dtype {
            bail!(
                "CLIP: layer {index} is {:?}, the resident weights {:?}: one compute dtype",
                vb.dtype(),
                self.dtype
            );
        }
        let layer = Layer::new(&self.cfg, vb)?;
        state.hidden = layer.forward(&self.cfg, &state.hidden, &state.causal)?;
        state.next += 1;
        Ok(())
    }

    /// The final LayerNorm, the pooled output and (if present) its projection.
    pub fn finish(&self, state: State) -> Result<ClipOutput> {
        if state.next != self.cfg.num_hidden_layers {
            bail!(
                "CLIP: finish after {} of {} layers",
                state.next,
                self.cfg.num_hidden_layers
            );
        }
        let hidden = self.final_norm.forward(&state.hidden)?;
        let pooled = hidden.narrow(1, state.eos_position, 1)?.squeeze(1)?; // [1, d]
        let projected = match &self.projection {
            Some(p) => Some(pooled.matmul(&p.t()?)?.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(ClipOutput {
            hidden: hidden.to_dtype(DType::F32)?,
            pooled: pooled.to_dtype(DType::F32)?,
            projected,
        })
    }

    /// The whole model, asking `blocks(i)` for each unit's `VarBuilder` in turn.
    pub fn forward<'a>(
        &self,
        ids: &[u32],
        blocks: &mut dyn FnMut(usize) -> Result<VarBuilder<'a>>,
    ) -> Result<ClipOutput> {
        let mut state = self.prepare(ids)?;
        for i in 0..self.cfg.num_hidden_layers {
            self.run_unit(i, blocks(i)?, &mut state)?;
        }
        self.finish(state)
    }
}

/// Every tensor of a CLIP text-model file in the canonical layout, with its shape; with
/// `projection_dim`, also `text_projection.weight` (as in ComfyUI's `clip_l.safetensors`).
pub fn tensor_shapes(cfg: &Config, projection_dim: Option<usize>) -> Vec<(String, Vec<usize>)> {
    let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
    let mut out = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![cfg.vocab_size, d],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![cfg.max_position_embeddings, d],
        ),
    ];
    for unit in units(cfg) {
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{unit}.self_attn.{p}.weight"), vec![d, d]));
            out.push((format!("{unit}.self_attn.{p}.bias"), vec![d]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{unit}.{n}.weight"), vec![d]));
            out.push((format!("{unit}.{n}.bias"), vec![d]));
        }
        out.push((format!("{unit}.mlp.fc1.weight"), vec![ff, d]));
        out.push((format!("{unit}.mlp.fc1.bias"), vec![ff]));
        out.push((format!("{unit}.mlp.fc2.weight"), vec![d, ff]));
        out.push((format!("{unit}.mlp.fc2.bias"), vec![d]));
    }
    out.push(("text_model.final_layer_norm.weight".into(), vec![d]));
    out.push(("text_model.final_layer_norm.bias".into(), vec![d]));
    if let Some(p) = projection_dim {
        out.push(("text_projection.weight".into(), vec![p, d]));
    }
    out
}

/// Deterministic random weights for the tiny demo CLIP ([`Config::tiny`]), in the real layout
/// with a 32-wide `text_projection`, f32 on the CPU; the same `seed` gives the same values.
pub fn tiny_weights(seed: u64) -> Result<Vec<(String, Tensor)>> {
    let cfg = Config::tiny();
    tensor_shapes(&cfg, Some(cfg.hidden_size))
        .into_iter()
        .map(|(name, shape)| Ok((name.clone(), super::seeded::weight(seed, &name, &shape)?)))
        .collect()
}

#[cfg(test)]
mod tests;
