//! The raw manifest types: the TOML file as written, every value with its span, nothing
//! checked beyond each value's own syntax. Their doc comments are the JSON schema's
//! descriptions (`mgpu schema`) and the help shown for missing or mistyped keys; keep them
//! accurate and keep README's key reference in step.
//!
//! Only [`super::validate`] turns these into the validated [`super::Manifest`].

use crate::alloc::Allocation;
use crate::device::DeviceName;
use crate::family::Family;
use crate::sample::{Sampler, Scheduler};
use crate::units::ByteSize;

use super::names::{ComputeDtype, FluxVariant, LoraMode};
use super::read::{raw_table, Named, RawTable, Sp};

raw_table! {
    /// An mgpu manifest: the models to load, the pipelines they form and the jobs to run.
    /// Paths are relative to the manifest's folder.
    #[schemars(title = "mgpu manifest")]
    pub struct RawManifest {
        /// Settings for the whole run.
        settings: RawSettings,
        /// Defaults for every `[[jobs]]` entry; a job's own keys win.
        defaults: RawDefaults,
        /// Model components by name: `[models.NAME]`. Names use letters, digits, `_` and `-`.
        #[schemars(required, extend("minProperties" = 1))]
        models: Named<RawModel>,
        /// Pipelines by name: `[pipelines.NAME]`, each a diffusion model, its text encoders and
        /// its VAE.
        pipelines: Named<RawPipeline>,
        /// The images to make: one `[[jobs]]` table per prompt.
        jobs: Vec<Sp<RawJob>>,
    }
}

raw_table! {
    /// `[settings]`: settings for the whole run.
    pub struct RawSettings {
        /// Folder that every job's `output` is relative to, itself relative to the manifest's
        /// folder (default: the manifest's folder). Outputs cannot leave it.
        #[schemars(example = &"out")]
        output_root: String,
        /// Regenerate every image, like `mgpu run --force` (default false: an image whose file
        /// carries the same job hash is skipped, so an interrupted run resumes where it stopped).
        overwrite: bool,
        /// Compute device for models that do not name one.
        #[schemars(example = &"cuda:0")]
        compute: DeviceName,
    }
}

raw_table! {
    /// `[defaults]`: values for keys a `[[jobs]]` table leaves out.
    pub struct RawDefaults {
        /// Default pipeline (when the manifest has exactly one pipeline, it is the default anyway).
        pipeline: String,
        /// Default number of images per job.
        #[schemars(range(min = 1, max = 100000))]
        count: u32,
        /// Default image width in pixels.
        #[schemars(range(min = 1))]
        width: u32,
        /// Default image height in pixels.
        #[schemars(range(min = 1))]
        height: u32,
        /// Default number of denoising steps.
        #[schemars(range(min = 1))]
        steps: u32,
        /// Default sampler.
        sampler: Sampler,
        /// Default scheduler.
        scheduler: Scheduler,
        /// Default guidance.
        #[schemars(range(min = 0.0))]
        guidance: f64,
        /// Default output path template.
        output: String,
        /// Default denoise strength for jobs with an `init_image`.
        #[schemars(extend("exclusiveMinimum" = 0.0, "maximum" = 1.0))]
        denoise: f64,
        /// Default largest batch.
        #[schemars(range(min = 1))]
        batch: u32,
        /// Default negative prompt (true classifier-free guidance).
        negative_prompt: String,
        /// Default classifier-free guidance scale.
        #[schemars(range(min = 0.0))]
        cfg: f64,
        /// Default guidance scale of the low-noise expert's steps (two-expert pipelines).
        #[schemars(range(min = 0.0))]
        cfg_low_noise: f64,
        /// Default model-sampling shift.
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        shift: f64,
        /// Default number of video frames (4k+1).
        #[schemars(range(min = 1))]
        frames: u32,
        /// Default video frame rate.
        #[schemars(range(min = 1, max = 240))]
        fps: u32,
    }
}

raw_table! {
    /// `[models.NAME]`: one model component (a diffusion transformer, a text encoder or a VAE):
    /// its weights file and how its weights are placed.
    pub struct RawModel {
        /// Architecture family: flux, flux-vae, t5, clip-l (runnable); wan, wan-vae, umt5
        /// (planned and inspected only).
        #[schemars(required)]
        family: Family,
        /// Weights file (.safetensors or .gguf), relative to the manifest's folder.
        #[schemars(required, example = &"models/flux1-dev.safetensors")]
        file: String,
        /// Device this model computes on: `cuda:N` or `cpu` (default: `[settings].compute`).
        #[schemars(example = &"cuda:0")]
        compute: DeviceName,
        /// How the weights are spread over devices: `auto` (default) or a DisTorch2 expert
        /// string such as `cuda:0,8gb;cpu,*`. Not together with `virtual_vram`.
        allocation: Allocation,
        /// Amount of weights to move off the compute device to `donor` (DisTorch2's "virtual
        /// VRAM"); the compute device keeps the rest. Not together with `allocation`.
        #[schemars(example = &"12GiB")]
        virtual_vram: ByteSize,
        /// Where `virtual_vram` weights live: `cpu` (default), another `cuda:N`, or `disk`.
        /// Only with `virtual_vram`.
        donor: DeviceName,
        /// Placement overrides, tried in order before the allocation: the first whose `pattern`
        /// matches a unit or tensor name decides its device.
        overrides: Vec<Sp<RawOverride>>,
        /// LoRAs to apply to this model, in order.
        loras: Vec<Sp<RawLora>>,
        /// How LoRAs are applied: `bake` (default) or `on_dequant` (GGUF only).
        lora_mode: LoraMode,
        /// Compute dtype: bf16, f16 or f32 (default bf16 on CUDA, f32 on the CPU).
        dtype: ComputeDtype,
        /// Tokenizer file for a text encoder (t5, clip-l, umt5), relative to the manifest's
        /// folder: a Hugging Face `tokenizer.json`, a SentencePiece `spiece.model`, or a folder
        /// holding one. Required for t5 and clip-l; for umt5 it may be left out when the
        /// weights file carries its `spiece_model` (ComfyUI's umT5 files do).
        #[schemars(example = &"models/t5-tokenizer.json")]
        tokenizer: String,
        /// FLUX variant, `dev` or `schnell` (flux only; default: detected from the weights).
        variant: FluxVariant,
        /// Number of prefetch slots for streamed blocks on the compute device (default: chosen
        /// by the planner). 1 means no copy/compute overlap.
        #[schemars(range(min = 1, max = 64))]
        prefetch: u32,
        /// Keep this model's weights in place for the whole run (default false: its memory may
        /// be freed between uses, e.g. text encoders after all prompts are encoded).
        keep_loaded: bool,
        /// VAEs only: decode in overlapping tiles of this many latent pixels (8× as many image
        /// pixels), blended; bounds the decoder's memory for large images. Tiled pixels differ
        /// slightly from an untiled decode, so it is never switched on automatically. Default:
        /// off (one piece).
        #[schemars(range(min = 16, max = 4096))]
        decode_tile: u32,
    }
}

raw_table! {
    /// One LoRA: `{ file = "loras/style.safetensors", strength = 0.8 }`.
    pub struct RawLora {
        /// LoRA file (.safetensors), relative to the manifest's folder.
        #[schemars(required, example = &"loras/style.safetensors")]
        file: String,
        /// Multiplier of the LoRA's delta (default 1.0; negative values subtract it).
        strength: f64,
        /// Fail when a LoRA tensor matches no weight of the model (default true; false warns
        /// and skips such tensors).
        strict: bool,
    }
}

raw_table! {
    /// A placement override: `{ pattern = "single_blocks\\.(3[0-7])", device = "cpu" }`.
    pub struct RawOverride {
        /// Regular expression matched against whole unit names (`single_blocks.37`) and tensor
        /// names (`single_blocks.37.linear1.weight`); anchored at both ends.
        #[schemars(required, example = &"single_blocks\\.(3[0-7])")]
        pattern: String,
        /// Where matching units or tensors live: `cuda:N`, `cpu` or `disk`.
        #[schemars(required)]
        device: DeviceName,
    }
}

raw_table! {
    /// `[pipelines.NAME]`: which models make one pipeline.
    pub struct RawPipeline {
        /// The diffusion model (a `[models.NAME]` of family flux or wan). With
        /// `diffusion_low_noise` (Wan 2.2 A14B), the high-noise expert.
        #[schemars(required)]
        diffusion: String,
        /// Wan 2.2 A14B's low-noise expert (a second wan model of the same shape): `diffusion`
        /// denoises the steps whose timestep is at least `boundary × 1000`, this model the rest,
        /// switching once per run.
        diffusion_low_noise: String,
        /// Where the experts switch, as a fraction of the 1000 training timesteps, in (0, 1)
        /// (default from the weights: 0.875 for text-to-video, 0.900 for image-to-video, as
        /// Wan 2.2 ships them). Only with `diffusion_low_noise`.
        #[schemars(range(min = 0.0, max = 1.0))]
        boundary: f64,
        /// FLUX only: how many tokens T5 encodes (the prompt cut to fit, then padded), as
        /// diffusers' `FluxPipeline(max_sequence_length=…)` takes it; 2 to 512 (`</s>`
        /// included). Default 512
        /// for FLUX.1-dev and 256 for FLUX.1-schnell. A model trained at another length
        /// (manifests/demo.toml: 32) needs its own.
        #[schemars(range(min = 2, max = 512))]
        max_sequence_length: u32,
        /// The text encoders: FLUX needs one clip-l and one t5 model, Wan one umt5 model.
        #[schemars(required)]
        text_encoders: Vec<Sp<String>>,
        /// The VAE (flux-vae for FLUX, wan-vae for Wan).
        #[schemars(required)]
        vae: String,
    }
}

raw_table! {
    /// `[[jobs]]`: a prompt to render, `count` times from consecutive seeds.
    pub struct RawJob {
        /// Name used in messages and in `{job}` (default `job1`, `job2`, … by position).
        name: String,
        /// Pipeline to run (default: `[defaults].pipeline`, or the only pipeline).
        pipeline: String,
        /// The text prompt.
        #[schemars(required)]
        prompt: String,
        /// Seed of the first image; image i uses seed + i (default 0).
        seed: u64,
        /// Number of images (default 1).
        #[schemars(range(min = 1, max = 100000))]
        count: u32,
        /// Image width in pixels, a multiple of 16 for FLUX (default 1024).
        #[schemars(range(min = 1))]
        width: u32,
        /// Image height in pixels, a multiple of 16 for FLUX (default 1024).
        #[schemars(range(min = 1))]
        height: u32,
        /// Number of denoising steps (default 20).
        #[schemars(range(min = 1))]
        steps: u32,
        /// Sampler (default euler).
        sampler: Sampler,
        /// Scheduler (default simple).
        scheduler: Scheduler,
        /// FLUX dev's distilled guidance (default 3.5; ignored by schnell).
        #[schemars(range(min = 0.0))]
        guidance: f64,
        /// Output path template under `[settings].output_root`, ending in `.png`; placeholders
        /// {seed}, {index}, {job}, {pipeline}, {width}, {height}, {steps}, {sampler},
        /// {scheduler}, numbers zero-padded with {seed:05} (default `{job}-{seed}.png`).
        #[schemars(example = &"out/fox-{seed}.png")]
        output: String,
        /// Image to start from, relative to the manifest's folder (PNG or JPEG, checked by
        /// `mgpu check`): img2img for image models, where its size must be width × height;
        /// the first frame for image-to-video (a pipeline with Wan 2.2 A14B I2V experts),
        /// where any size is scaled, keeping its aspect ratio, and centre-cropped to
        /// width × height.
        init_image: String,
        /// How much of `init_image` is replaced, in (0, 1] (default 0.75; only with
        /// `init_image`, and not for image-to-video).
        #[schemars(extend("exclusiveMinimum" = 0.0, "maximum" = 1.0))]
        denoise: f64,
        /// Largest batch this job's images are run in (default: chosen from free memory).
        #[schemars(range(min = 1))]
        batch: u32,
        /// What the image should not show: the unconditional half of true classifier-free
        /// guidance (default empty). Used when `cfg` is not 1.
        negative_prompt: String,
        /// Classifier-free guidance scale: each step evaluates the model on the prompt and on
        /// the negative prompt (in one pass over the weights) and moves `cfg` times their
        /// difference from the negative (default 5 for Wan, 1 = off for FLUX, whose dev model
        /// uses the distilled `guidance` instead).
        #[schemars(range(min = 0.0))]
        cfg: f64,
        /// Pipelines with `diffusion_low_noise` (Wan 2.2 A14B): the guidance scale of the
        /// low-noise expert's steps, diffusers' `guidance_scale_2` (default: `cfg`; Wan 2.2's
        /// text-to-video uses cfg 4 on the high-noise expert and 3 on the low-noise one).
        #[schemars(range(min = 0.0))]
        cfg_low_noise: f64,
        /// Model-sampling shift of the noise schedule (default: the model's own — FLUX dev's
        /// size-dependent μ, 1 for schnell, 5 for Wan).
        #[schemars(extend("exclusiveMinimum" = 0.0))]
        shift: f64,
        /// Video families (wan): frames per video, 4k+1 (default 81: about 5 s at 16 fps).
        /// Image families make one frame.
        #[schemars(range(min = 1))]
        frames: u32,
        /// Video families: frames per second of the written video (default 16, Wan 2.1's).
        #[schemars(range(min = 1, max = 240))]
        fps: u32,
    }
}

/// Where a key that is unknown at `path` belongs, if it is a key of another table.
pub(crate) fn key_home(key: &str, path: &str) -> Option<&'static str> {
    let homes: [(&'static str, &'static [&'static str]); 6] = [
        ("a `[models.NAME]` table", RawModel::meta().keys),
        ("a `[[jobs]]` table or `[defaults]`", RawJob::meta().keys),
        ("a `[pipelines.NAME]` table", RawPipeline::meta().keys),
        ("`[settings]`", RawSettings::meta().keys),
        ("a `loras` entry of a model", RawLora::meta().keys),
        ("the top level", RawManifest::meta().keys),
    ];
    let in_model = path.starts_with("models.");
    homes
        .into_iter()
        .filter(|(home, _)| !(in_model && home.contains("loras")))
        .find(|(_, keys)| keys.contains(&key))
        .map(|(home, _)| home)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader's keys are the schema's properties (both come from one declaration; this
    /// guards against attributes such as `rename` that would split them).
    #[test]
    fn reader_keys_are_schema_properties() {
        fn check<T: RawTable + schemars::JsonSchema>() {
            let schema = crate::manifest::schema::generator().into_root_schema_for::<T>();
            let mut props: Vec<&str> = schema
                .get("properties")
                .and_then(|p| p.as_object())
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            props.sort_unstable();
            let mut keys = T::meta().keys.to_vec();
            keys.sort_unstable();
            assert_eq!(keys, props, "{}", T::schema_name());
            assert_eq!(
                schema.get("additionalProperties"),
                Some(&serde_json::Value::Bool(false))
            );
        }
        check::<RawManifest>();
        check::<RawSettings>();
        check::<RawDefaults>();
        check::<RawModel>();
        check::<RawLora>();
        check::<RawOverride>();
        check::<RawPipeline>();
        check::<RawJob>();
    }

    #[test]
    fn key_homes() {
        assert_eq!(
            key_home("steps", "models.flux"),
            Some("a `[[jobs]]` table or `[defaults]`")
        );
        assert_eq!(
            key_home("family", "jobs.0"),
            Some("a `[models.NAME]` table")
        );
        assert_eq!(key_home("zzz", "jobs.0"), None);
    }
}
