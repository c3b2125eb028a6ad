//! The `mgpu` metadata record: everything needed to reproduce an image, stored as JSON in the
//! PNG's `mgpu` text chunk (the A1111-style `parameters` chunk is derived from it, see
//! [`super::infotext`]).

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::family::{Family, Role};
use crate::sample::{Sampler, Scheduler};

/// Version of the record layout; bump when a field changes meaning.
pub const RECORD_FORMAT: u32 = 1;

/// One image's generation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Layout version ([`RECORD_FORMAT`]).
    pub format: u32,
    /// The mgpu version that made the image (`env!("CARGO_PKG_VERSION")`).
    pub mgpu_version: String,
    /// The job's name in the manifest.
    pub job: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    pub steps: u32,
    /// Classifier-free guidance scale (1 = no negative pass, FLUX's usual value).
    pub cfg_scale: f64,
    /// Two-expert pipelines (Wan 2.2 A14B): the low-noise expert's guidance scale when it
    /// differs from `cfg_scale`'s source (the job's `cfg_low_noise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_scale_low_noise: Option<f64>,
    /// Two-expert pipelines: the boundary the experts switched at (fraction of 1000 timesteps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_boundary: Option<f64>,
    /// FLUX.1-dev's distilled guidance (A1111/Forge "Distilled CFG Scale"); `None` for schnell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// img2img strength in (0, 1]; 1 for text-to-image.
    pub denoise: f64,
    /// The init image (img2img, or image-to-video's first frame), as the manifest named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// SHA-256 of the init image file's bytes, lowercase hex (the job hash includes it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image_sha256: Option<String>,
    /// The model-sampling shift used (FLUX `mu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    pub width: u32,
    pub height: u32,
    /// Frames of a video (absent for images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    /// Frames per second of a video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Every model file the pipeline used: diffusion model, VAE, text encoders.
    pub models: Vec<ModelRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
    /// The queue's task hash (everything that decides the pixels, docs/executor.md): a rerun
    /// skips an image whose file carries the hash it would be made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_hash: Option<String>,
}

/// A model file of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The model's name in the manifest.
    pub name: String,
    pub family: Family,
    /// The weights file, as the manifest named it.
    pub file: String,
    /// SHA-256 of the whole file, lowercase hex (A1111 "Model hash" is its first 10 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A LoRA applied to the diffusion model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraRecord {
    pub name: String,
    pub file: String,
    pub strength: f64,
    /// SHA-256 of the whole file, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-256 of a safetensors file's tensor data (after the header), lowercase hex: what
    /// A1111 writes (first 12 digits) in "Lora hashes" and civitai calls AutoV3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autov3: Option<String>,
}

impl ImageRecord {
    /// The first model whose family is a diffusion model.
    pub fn diffusion_model(&self) -> Option<&ModelRecord> {
        self.models
            .iter()
            .find(|m| m.family.role() == Role::Diffusion)
    }

    /// Whether this is an img2img image (denoise below ComfyUI's "full" threshold).
    pub fn is_img2img(&self) -> bool {
        self.denoise <= 0.9999
    }
}

/// A file's name without folders and extension (`models/flux1-dev.safetensors` → `flux1-dev`),
/// the way A1111 names models in "Model:".
pub fn file_stem(file: &str) -> String {
    let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn example() -> ImageRecord {
        ImageRecord {
            format: RECORD_FORMAT,
            mgpu_version: "0.1.0".into(),
            job: "cat".into(),
            prompt: "a cat on a windowsill, morning light".into(),
            negative_prompt: None,
            seed: 42,
            sampler: Sampler::Euler,
            scheduler: Scheduler::Simple,
            steps: 20,
            cfg_scale: 1.0,
            cfg_scale_low_noise: None,
            expert_boundary: None,
            guidance: Some(3.5),
            denoise: 1.0,
            init_image: None,
            init_image_sha256: None,
            shift: Some(1.15),
            width: 1024,
            height: 1024,
            frames: None,
            fps: None,
            models: vec![
                ModelRecord {
                    name: "dit".into(),
                    family: Family::Flux,
                    file: "models/flux1-dev.safetensors".into(),
                    sha256: Some(
                        "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into(),
                    ),
                },
                ModelRecord {
                    name: "vae".into(),
                    family: Family::FluxVae,
                    file: "models/ae.safetensors".into(),
                    sha256: None,
                },
                ModelRecord {
                    name: "clip".into(),
                    family: Family::ClipL,
                    file: "clip_l.safetensors".into(),
                    sha256: None,
                },
                ModelRecord {
                    name: "t5".into(),
                    family: Family::T5,
                    file: "t5xxl_fp16.safetensors".into(),
                    sha256: None,
                },
            ],
            loras: vec![LoraRecord {
                name: "style".into(),
                file: "loras/flux_style.safetensors".into(),
                strength: 0.8,
                sha256: None,
                autov3: Some(
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                ),
            }],
            job_hash: None,
        }
    }

    #[test]
    fn stems() {
        assert_eq!(file_stem("models/flux1-dev.safetensors"), "flux1-dev");
        assert_eq!(file_stem(r"C:\m\ae.safetensors"), "ae");
        assert_eq!(file_stem("flux1-dev-Q8_0.gguf"), "flux1-dev-Q8_0");
        assert_eq!(file_stem("noext"), "noext");
    }

    #[test]
    fn json_round_trip_and_strictness() {
        let r = example();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ImageRecord>(&json).unwrap(), r);
        let bad = json.replace("\"steps\"", "\"stepz\"");
        let e = serde_json::from_str::<ImageRecord>(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `stepz`"), "{e}");
        assert_eq!(r.diffusion_model().unwrap().name, "dit");
        assert!(!r.is_img2img());
    }
}
