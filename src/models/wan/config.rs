//! Wan DiT hyper-parameters: the named presets and inference from a checkpoint's shapes.
//!
//! Reference: the Wan team's `wan/configs/wan_t2v_14B.py`, `wan_t2v_1_3B.py` and `WanModel`'s
//! arguments (`wan/modules/model.py`, <https://github.com/Wan-Video/Wan2.1>); the same numbers
//! as the `transformer/config.json` of `Wan-AI/Wan2.1-T2V-{14B,1.3B}-Diffusers`. Wan 2.2:
//! `wan/configs/wan_i2v_A14B.py` and `wan_ti2v_5B.py` (<https://github.com/Wan-Video/Wan2.2>),
//! `Wan-AI/Wan2.2-TI2V-5B-Diffusers`' `transformer/config.json`.

use std::collections::BTreeMap;

use candle_core::{bail, Result};

use crate::models::spec::ShapeOf;

/// Hyper-parameters of a Wan 2.1 text-to-video transformer (`WanModel.__init__`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// 3-D patch (t, h, w) of `patch_embedding`, a Conv3d with kernel = stride = patch.
    pub patch_size: [usize; 3],
    /// Tokens of the text context (umT5's 512; the runner pads the prompt to this length).
    pub text_len: usize,
    /// Latent channels in (`in_dim`) and out (`out_dim`): 16, the Wan 2.1 VAE's `z_dim`.
    pub in_dim: usize,
    pub out_dim: usize,
    /// Hidden width.
    pub dim: usize,
    pub ffn_dim: usize,
    /// Width of the sinusoidal timestep embedding fed to `time_embedding.0`.
    pub freq_dim: usize,
    /// Width of the text states (umT5-XXL's 4096).
    pub text_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// RMSNorm of q and k over the full width (`norm_q`, `norm_k`).
    pub qk_norm: bool,
    /// An affine LayerNorm (`norm3`) before the cross-attention.
    pub cross_attn_norm: bool,
    pub eps: f64,
}

/// Base of the rotary frequencies (`rope_params(..., theta=10000)`).
pub const ROPE_THETA: f64 = 10_000.0;
/// Head dimension of every official Wan model (used when a file does not say the head count).
pub const OFFICIAL_HEAD_DIM: usize = 128;
/// Latent channels of the Wan 2.1 VAE (`z_dim`): the input width of text-to-video checkpoints
/// and the output width of every supported one.
pub const LATENT_CHANNELS: usize = 16;
/// Channels of the image conditioning an image-to-video checkpoint (Wan 2.2 A14B I2V) takes
/// after the noisy latent: a 4-channel first-frame mask, then the 16-channel VAE latent of the
/// conditioning video (`in_dim` 36 = 16 + 4 + 16).
pub const I2V_CONDITION_CHANNELS: usize = 4 + LATENT_CHANNELS;
/// Temporal and spatial compression of the Wan 2.1 VAE (`vae_stride = (4, 8, 8)`).
pub const VAE_STRIDE: [usize; 3] = [4, 8, 8];
/// Latent channels of the Wan 2.2 VAE (`z_dim` 48): the input and output width of Wan 2.2
/// TI2V-5B.
pub const WAN22_LATENT_CHANNELS: usize = 48;
/// Temporal and spatial compression of the Wan 2.2 VAE (`wan_ti2v_5B.py`: `vae_stride =
/// (4, 16, 16)`).
pub const WAN22_VAE_STRIDE: [usize; 3] = [4, 16, 16];

impl Config {
    /// Wan 2.1 T2V 14B (`wan_t2v_14B.py`): width 5120, 40 heads of 128, 40 blocks, FFN 13824.
    pub fn t2v_14b() -> Self {
        Self {
            patch_size: [1, 2, 2],
            text_len: 512,
            in_dim: 16,
            out_dim: 16,
            dim: 5120,
            ffn_dim: 13824,
            freq_dim: 256,
            text_dim: 4096,
            num_heads: 40,
            num_layers: 40,
            qk_norm: true,
            cross_attn_norm: true,
            eps: 1e-6,
        }
    }

    /// Wan 2.2 A14B I2V (`wan_i2v_A14B.py`), each expert: the 14B shape with 36 input
    /// channels (noisy latent, mask, image latent) and no CLIP image embedding.
    pub fn i2v_a14b() -> Self {
        Self {
            in_dim: LATENT_CHANNELS + I2V_CONDITION_CHANNELS,
            ..Self::t2v_14b()
        }
    }

    /// Wan 2.2 TI2V-5B (`wan_ti2v_5B.py`): width 3072, 24 heads of 128, 30 blocks, FFN 14336,
    /// 48 latent channels in and out (the Wan 2.2 VAE's); text-to-video and, with the init
    /// image's latent as frame 0, image-to-video (see [`Config::first_frame_conditioning`]).
    pub fn ti2v_5b() -> Self {
        Self {
            in_dim: WAN22_LATENT_CHANNELS,
            out_dim: WAN22_LATENT_CHANNELS,
            dim: 3072,
            ffn_dim: 14336,
            num_heads: 24,
            num_layers: 30,
            ..Self::t2v_14b()
        }
    }

    /// Wan 2.1 T2V 1.3B (`wan_t2v_1_3B.py`): width 1536, 12 heads of 128, 30 blocks, FFN 8960.
    pub fn t2v_1_3b() -> Self {
        Self {
            dim: 1536,
            ffn_dim: 8960,
            num_heads: 12,
            num_layers: 30,
            ..Self::t2v_14b()
        }
    }

    /// A tiny model for tests and the demo: width 32, 2 heads of 16 (RoPE split t 8, h 4,
    /// w 4), FFN 64, 2 blocks, text width 32 (the tiny umT5's). Latent channels, patch,
    /// `freq_dim` and the 512-token context stay real, so it pairs with the real pipeline.
    pub fn tiny() -> Self {
        Self {
            dim: 32,
            ffn_dim: 64,
            text_dim: 32,
            num_heads: 2,
            num_layers: 2,
            ..Self::t2v_14b()
        }
    }

    /// [`Config::tiny`] as an image-to-video expert (36 input channels), for tests and the
    /// image-to-video demo.
    pub fn tiny_i2v() -> Self {
        Self {
            in_dim: LATENT_CHANNELS + I2V_CONDITION_CHANNELS,
            ..Self::tiny()
        }
    }

    /// [`Config::tiny`] with the Wan 2.2 VAE's 48 latent channels in and out: a TI2V-5B-shaped
    /// model for tests and the TI2V demo.
    pub fn tiny_ti2v() -> Self {
        Self {
            in_dim: WAN22_LATENT_CHANNELS,
            out_dim: WAN22_LATENT_CHANNELS,
            ..Self::tiny()
        }
    }

    /// Whether the model denoises the Wan 2.2 VAE's 48-channel latents (TI2V-5B): it takes an
    /// init image as latent frame 0 (the image's latent replaces that frame, whose tokens are
    /// embedded at timestep 0) rather than as extra channels.
    pub fn first_frame_conditioning(&self) -> bool {
        self.out_dim == WAN22_LATENT_CHANNELS
    }

    /// Temporal and spatial compression of the VAE whose latents the model denoises:
    /// [`WAN22_VAE_STRIDE`] for 48 channels, else [`VAE_STRIDE`].
    pub fn vae_stride(&self) -> [usize; 3] {
        if self.out_dim == WAN22_LATENT_CHANNELS {
            WAN22_VAE_STRIDE
        } else {
            VAE_STRIDE
        }
    }

    /// Channels of image conditioning the model takes after the noisy latent: 0 for
    /// text-to-video, [`I2V_CONDITION_CHANNELS`] for image-to-video.
    pub fn condition_channels(&self) -> usize {
        self.in_dim.saturating_sub(self.out_dim)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Values per patch: `in_dim · pt · ph · pw` (the patch embedding's input width).
    pub fn patch_in(&self) -> usize {
        self.in_dim * self.patch_volume()
    }

    /// Values per output token: `out_dim · pt · ph · pw` (`head.head`'s output width).
    pub fn patch_out(&self) -> usize {
        self.out_dim * self.patch_volume()
    }

    fn patch_volume(&self) -> usize {
        self.patch_size.iter().product()
    }

    /// RoPE dimensions of the (t, h, w) axes for head dimension `d`: h and w get `2·⌊d/6⌋`,
    /// t the rest (`rope_params(1024, d - 4 * (d // 6))`, `rope_params(1024, 2 * (d // 6))`).
    pub fn rope_axes(&self) -> [usize; 3] {
        let d = self.head_dim();
        let hw = 2 * (d / 6);
        [d - 2 * hw, hw, hw]
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            bail!(
                "Wan config: width {} is not a multiple of the {} heads",
                self.dim,
                self.num_heads
            )
        }
        let d = self.head_dim();
        if d < 6 || d % 2 == 1 {
            bail!(
                "Wan config: head dimension {d} (width {} / {} heads) must be even and at least 6 for the 3-D RoPE split",
                self.dim,
                self.num_heads
            )
        }
        if self.patch_size.contains(&0) {
            bail!(
                "Wan config: patch size {:?} has a zero side",
                self.patch_size
            )
        }
        if self.freq_dim == 0 || self.freq_dim % 2 == 1 {
            bail!(
                "Wan config: timestep embedding width {} must be even",
                self.freq_dim
            )
        }
        for (what, v) in [
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("ffn_dim", self.ffn_dim),
            ("text_dim", self.text_dim),
            ("text_len", self.text_len),
            ("num_layers", self.num_layers),
        ] {
            if v == 0 {
                bail!("Wan config: {what} is 0")
            }
        }
        Ok(())
    }

    /// Infers the configuration from tensor shapes in the original Wan layout (`shape_of`
    /// returns a canonical tensor's shape, `None` when absent): widths and the patch from
    /// `patch_embedding`, `head.head`, `text_embedding.0`, `time_embedding.0` and
    /// `blocks.0.ffn.0`; the block count by probing; `qk_norm` and `cross_attn_norm` from the
    /// presence of `norm_q` and `norm3`. The head count is not stored in the weights: it is
    /// taken from `meta` (`num_heads` as in the original `config.json`, diffusers'
    /// `num_attention_heads`, or `attention_head_dim`), else width / 128 (every official Wan
    /// model has head dimension 128). Input and output widths are 16 and 16 (text-to-video),
    /// 36 and 16 (Wan 2.2 A14B image-to-video: latent, mask and image latent, see
    /// [`I2V_CONDITION_CHANNELS`]) or 48 and 48 (Wan 2.2 TI2V-5B, the Wan 2.2 VAE's latent);
    /// Wan 2.1 image-to-video checkpoints (a CLIP-vision image embedding, `img_emb`) and
    /// other widths are refused.
    pub fn infer(shape_of: ShapeOf, meta: &BTreeMap<String, String>) -> Result<Self> {
        let has = |n: &str| shape_of(n).is_some();
        if let Some(n) = [
            "img_emb.proj.0.weight",
            "img_emb.proj.1.weight",
            "blocks.0.cross_attn.k_img.weight",
        ]
        .into_iter()
        .find(|n| has(n))
        {
            bail!(
                "Wan weights: `{n}` belongs to a Wan 2.1 image-to-video (I2V/FLF2V) model, which conditions on a CLIP-vision image embedding; that image-to-video Wan is not supported yet (Wan 2.2 A14B image-to-video experts, which take none, are), use a text-to-video (T2V) checkpoint or the Wan 2.2 I2V experts"
            )
        }
        let need = |name: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => bail!("Wan weights: `{name}` has shape {s:?}, expected rank {rank}"),
                None => bail!(
                    "Wan weights: tensor `{name}` is missing (is this a Wan 2.1 transformer in the original/ComfyUI or diffusers layout?)"
                ),
            }
        };
        let pe = need("patch_embedding.weight", 5)?;
        let (dim, in_dim, patch_size) = (pe[0], pe[1], [pe[2], pe[3], pe[4]]);
        let known = [
            LATENT_CHANNELS,
            LATENT_CHANNELS + I2V_CONDITION_CHANNELS,
            WAN22_LATENT_CHANNELS,
        ];
        if !known.contains(&in_dim) {
            bail!(
                "Wan weights: `patch_embedding.weight` takes {in_dim} latent channels; text-to-video Wan 2.1 takes {LATENT_CHANNELS}, Wan 2.2 A14B image-to-video {}, Wan 2.2 TI2V-5B {WAN22_LATENT_CHANNELS} (other counts belong to control-conditioned Wan models, not supported)",
                LATENT_CHANNELS + I2V_CONDITION_CHANNELS
            )
        }
        let head = need("head.head.weight", 2)?;
        let volume: usize = patch_size.iter().product();
        if head[1] != dim || volume == 0 || head[0] % volume != 0 {
            bail!(
                "Wan weights: `head.head.weight` has shape {head:?}, expected [out·{volume}, {dim}] for patch {patch_size:?} and width {dim}"
            )
        }
        let out_dim = head[0] / volume;
        let want_out = if in_dim == WAN22_LATENT_CHANNELS {
            WAN22_LATENT_CHANNELS
        } else {
            LATENT_CHANNELS
        };
        if out_dim != want_out {
            bail!(
                "Wan weights: `head.head.weight` has shape {head:?}: {out_dim} output channels, expected {want_out} for a model taking {in_dim} (the latent of the {} VAE)",
                if want_out == LATENT_CHANNELS { "Wan 2.1" } else { "Wan 2.2" }
            )
        }
        let text = need("text_embedding.0.weight", 2)?;
        let time = need("time_embedding.0.weight", 2)?;
        let ffn = need("blocks.0.ffn.0.weight", 2)?;
        for (name, s) in [
            ("text_embedding.0.weight", &text),
            ("time_embedding.0.weight", &time),
        ] {
            if s[0] != dim {
                bail!("Wan weights: `{name}` has shape {s:?}, expected [{dim}, …] (width {dim} from `patch_embedding.weight`)")
            }
        }
        let num_layers = (0..)
            .take_while(|i| has(&format!("blocks.{i}.self_attn.q.weight")))
            .count();
        let cfg = Self {
            patch_size,
            text_len: 512,
            in_dim,
            out_dim,
            dim,
            ffn_dim: ffn[0],
            freq_dim: time[1],
            text_dim: text[1],
            num_heads: heads_from(dim, meta)?,
            num_layers,
            qk_norm: has("blocks.0.self_attn.norm_q.weight"),
            cross_attn_norm: has("blocks.0.norm3.weight"),
            eps: 1e-6,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The head count from the file's metadata, else `dim / 128`.
fn heads_from(dim: usize, meta: &BTreeMap<String, String>) -> Result<usize> {
    let num = |key: &str| -> Result<Option<usize>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => bail!("Wan metadata: `{key}` = `{v}` is not a positive integer"),
            },
        }
    };
    let heads = match (num("num_heads")?, num("num_attention_heads")?) {
        (Some(a), Some(b)) if a != b => {
            bail!("Wan metadata: `num_heads` = {a} but `num_attention_heads` = {b}")
        }
        (Some(n), _) | (None, Some(n)) => Some(n),
        (None, None) => match num("attention_head_dim")? {
            Some(d) if dim.is_multiple_of(d) => Some(dim / d),
            Some(d) => {
                bail!("Wan metadata: `attention_head_dim` = {d} does not divide the width {dim}")
            }
            None => None,
        },
    };
    match heads {
        Some(n) if dim.is_multiple_of(n) => Ok(n),
        Some(n) => bail!("Wan metadata: {n} heads do not divide the width {dim}"),
        None if dim.is_multiple_of(OFFICIAL_HEAD_DIM) => Ok(dim / OFFICIAL_HEAD_DIM),
        None => bail!(
            "Wan weights: the head count is not stored in the weights and width {dim} is not a multiple of {OFFICIAL_HEAD_DIM} (the head dimension of every official Wan model); give it as `num_heads` in the file's metadata or in a config.json beside the file (diffusers: `num_attention_heads`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for c in [
            Config::t2v_14b(),
            Config::t2v_1_3b(),
            Config::tiny(),
            Config::i2v_a14b(),
            Config::tiny_i2v(),
            Config::ti2v_5b(),
            Config::tiny_ti2v(),
        ] {
            c.validate().unwrap();
        }
        assert_eq!(Config::ti2v_5b().head_dim(), 128);
        assert_eq!(Config::ti2v_5b().condition_channels(), 0);
        assert!(Config::ti2v_5b().first_frame_conditioning());
        assert!(!Config::t2v_14b().first_frame_conditioning());
        assert!(!Config::i2v_a14b().first_frame_conditioning());
        assert_eq!(Config::tiny_ti2v().vae_stride(), [4, 16, 16]);
        assert_eq!(Config::tiny_i2v().vae_stride(), [4, 8, 8]);
        assert_eq!(Config::t2v_14b().head_dim(), 128);
        assert_eq!(Config::t2v_1_3b().head_dim(), 128);
        // 128: h = w = 2·21 = 42, t = 44 (Wan's split); 16: 4, 4, 8.
        assert_eq!(Config::t2v_14b().rope_axes(), [44, 42, 42]);
        assert_eq!(Config::tiny().rope_axes(), [8, 4, 4]);
        assert_eq!(Config::tiny().patch_in(), 64);
        assert_eq!(Config::tiny().condition_channels(), 0);
        assert_eq!(Config::i2v_a14b().condition_channels(), 20);
        assert_eq!(Config::tiny_i2v().patch_in(), 36 * 4);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let e = Config {
            num_heads: 3,
            ..Config::tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a multiple of the 3 heads"), "{e}");
        let e = Config {
            num_heads: 8,
            ..Config::tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("head dimension 4"), "{e}");
        let e = Config {
            patch_size: [1, 0, 2],
            ..Config::tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("zero side"), "{e}");
        let e = Config {
            freq_dim: 255,
            ..Config::tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("must be even"), "{e}");
    }

    #[test]
    fn head_count_sources() {
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(heads_from(5120, &m(&[])).unwrap(), 40);
        assert_eq!(heads_from(32, &m(&[("num_heads", "2")])).unwrap(), 2);
        assert_eq!(
            heads_from(32, &m(&[("num_attention_heads", "4")])).unwrap(),
            4
        );
        assert_eq!(
            heads_from(32, &m(&[("attention_head_dim", "16")])).unwrap(),
            2
        );
        let e = heads_from(32, &m(&[])).unwrap_err().to_string();
        assert!(
            e.contains("not a multiple of 128") && e.contains("`num_heads`"),
            "{e}"
        );
        let e = heads_from(32, &m(&[("num_heads", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a positive integer"), "{e}");
        let e = heads_from(32, &m(&[("num_heads", "3")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not divide the width 32"), "{e}");
        let e = heads_from(32, &m(&[("num_heads", "2"), ("num_attention_heads", "4")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("but `num_attention_heads` = 4"), "{e}");
    }
}
