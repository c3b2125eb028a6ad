//! Validation of `[[jobs]]` (with `[defaults]`) and of output collisions.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use super::{check_path, resolve, PathKind};
use crate::family::Family;
use crate::manifest::raw::{RawDefaults, RawJob, RawPipeline};
use crate::manifest::read::{valid_name, Cx, Sp};
use crate::manifest::template::OutputTemplate;
use crate::manifest::types::Job;
use crate::manifest::Diagnostic;
use crate::sample::names::suggest;
use crate::sample::{Sampler, Scheduler};

/// Defaults when neither the job nor `[defaults]` gives a value.
pub const DEFAULT_SIZE: u32 = 1024;
pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE: f64 = 3.5;
pub const DEFAULT_DENOISE: f64 = 0.75;
pub const DEFAULT_OUTPUT: &str = "{job}-{seed}.png";
/// Frames of a video job that does not say (Wan's default: 81, about 5 s at 16 fps).
pub const DEFAULT_FRAMES: u32 = 81;
/// Frames per second of a video job that does not say (Wan 2.1's).
pub const DEFAULT_FPS: u32 = 16;
/// Classifier-free guidance of a video job that does not say (Wan 2.1's `sample_guide_scale`).
pub const DEFAULT_CFG_VIDEO: f64 = 5.0;
/// The most images one job may ask for (so collision checks and plans stay tractable).
pub const MAX_COUNT: u32 = 100_000;
/// The most sampling steps: a schedule holds `steps + 1` sigmas and the run records every
/// step, so `steps = 4294967295` must stop at `check`, not abort `run` allocating 34 GB.
/// ComfyUI's limit; models are trained on 1000 timesteps.
pub const MAX_STEPS: u32 = 10_000;
/// The largest width or height in pixels (ComfyUI's `MAX_RESOLUTION` is 16384; mgpu's
/// attention over (w/16)·(h/16) tokens per frame is bounded by [`MAX_TOKENS`] as well).
pub const MAX_SIDE: u32 = 16_384;
/// The most latent tokens one image or video may have: (w/16)·(h/16)·latent frames. FLUX at
/// 2048×2048 has 16 384, Wan at 1280×720×81 has 75 600; 8192×8192 (262 144) is the most
/// whose attention still fits one GPU.
pub const MAX_TOKENS: u64 = 1 << 18;
/// The most frames of a video (4k+1).
pub const MAX_FRAMES: u32 = 4 * 256 + 1;
/// The largest batch: more images in one pass than this never fit the activations of one GPU.
pub const MAX_BATCH: u32 = 256;
/// The largest `guidance`, `cfg` or `shift`: far above any useful value (FLUX guidance 2–5,
/// cfg 1–10, shift 1–10), low enough that the arithmetic stays finite.
pub const MAX_SCALE: f64 = 1000.0;

/// The job's value, else the default's; with its span.
fn pick<'a, T>(job: &'a Option<Sp<T>>, def: &'a Option<Sp<T>>) -> Option<&'a Sp<T>> {
    job.as_ref().or(def.as_ref())
}

pub(super) fn validate_jobs(
    cx: &mut Cx,
    raw: &[Sp<RawJob>],
    defaults: &RawDefaults,
    pipelines: &[(Sp<String>, Sp<RawPipeline>)],
    families: &BTreeMap<String, Family>,
    dir: &Path,
    output_root: &Path,
) -> Option<Vec<Job>> {
    let pipeline_names: Vec<&str> = pipelines.iter().map(|(n, _)| n.value.as_str()).collect();
    let mut out = Vec::new();
    let mut ok = true;
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    for (i, j) in raw.iter().enumerate() {
        let header = j.span.clone();
        let job = &j.value;
        let mut fine = true;

        // Name: given (checked) or `jobN`; unique.
        let name = match &job.name {
            Some(n) => {
                if !valid_name(&n.value) {
                    cx.error(
                        n.span.clone(),
                        format!("`{}` is not a valid job name", n.value),
                        "",
                        Some(
                            "names use letters, digits, `_` and `-` (they appear in output paths)"
                                .into(),
                        ),
                    );
                    fine = false;
                }
                n.value.clone()
            }
            None => format!("job{}", i + 1),
        };
        let name_span = job.name.as_ref().map_or(header.clone(), |n| n.span.clone());
        if let Some(first) = names.get(&name) {
            let d = Diagnostic::error(format!("two jobs are named `{name}`"))
                .at(&cx.src, name_span.clone(), "")
                .with_secondary(first.clone(), "first named here")
                .with_help("give each job its own `name` (unnamed jobs are called job1, job2, … by position)");
            cx.push(d);
            fine = false;
        } else {
            names.insert(name.clone(), name_span);
        }

        // Pipeline: the job's, the default, or the only one.
        let pipeline = match pick(&job.pipeline, &defaults.pipeline) {
            Some(p) => {
                if pipeline_names.contains(&p.value.as_str()) {
                    Some(p.value.clone())
                } else {
                    let dym = suggest(&p.value, pipeline_names.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    let list = if pipeline_names.is_empty() {
                        "none".to_string()
                    } else {
                        pipeline_names.join(", ")
                    };
                    cx.error(
                        p.span.clone(),
                        format!("no pipeline named `{}`", p.value),
                        "",
                        Some(format!("{dym}pipelines: {list}")),
                    );
                    None
                }
            }
            None if pipeline_names.len() == 1 => Some(pipeline_names[0].to_string()),
            None => {
                let help = if pipeline_names.is_empty() {
                    "define a `[pipelines.NAME]` table with `diffusion`, `text_encoders` and `vae`"
                        .to_string()
                } else {
                    format!(
                        "add `pipeline = \"{}\"` (pipelines: {}), or a default `pipeline` in `[defaults]`",
                        pipeline_names[0],
                        pipeline_names.join(", ")
                    )
                };
                cx.error(
                    header.clone(),
                    format!("job `{name}` has no pipeline"),
                    "no `pipeline` here",
                    Some(help),
                );
                None
            }
        };
        // The diffusion family decides the size multiple.
        let family = pipeline.as_ref().and_then(|p| {
            let (_, rp) = pipelines.iter().find(|(n, _)| n.value == *p)?;
            families.get(&rp.value.diffusion.as_ref()?.value).copied()
        });

        let count_sp = pick(&job.count, &defaults.count);
        let count = count_sp.map_or(1, |c| c.value);
        if let Some(c) = count_sp {
            if !(1..=MAX_COUNT).contains(&c.value) {
                cx.error(
                    c.span.clone(),
                    format!("`count` must be 1 to {MAX_COUNT}, not {}", c.value),
                    "",
                    Some("count is the number of images, from consecutive seeds".into()),
                );
                fine = false;
            }
        }
        let seed = job.seed.as_ref().map_or(0, |s| s.value);
        if count >= 1 && seed.checked_add(count as u64 - 1).is_none() {
            let span = job.seed.as_ref().map_or(header.clone(), |s| s.span.clone());
            cx.error(
                span,
                format!(
                    "{count} images from seed {seed} need seeds beyond the largest, {}",
                    u64::MAX
                ),
                "",
                Some(format!(
                    "use a seed of at most {}",
                    u64::MAX - (count as u64 - 1)
                )),
            );
            fine = false;
        }

        let mut size = |key: &str, v: Option<&Sp<u32>>| -> u32 {
            let Some(v) = v else { return DEFAULT_SIZE };
            let multiple = family.map_or(1, Family::size_multiple);
            if v.value > MAX_SIDE {
                cx.error(
                    v.span.clone(),
                    format!("`{key}` must be at most {MAX_SIDE}, not {}", v.value),
                    "",
                    Some("FLUX is made for about 1024×1024 (up to 2048), Wan for 1280×720".into()),
                );
                fine = false;
            } else if v.value == 0 || v.value % multiple != 0 {
                let lower = (v.value / multiple) * multiple;
                let upper = lower + multiple;
                let choices = if lower == 0 {
                    format!("{upper}")
                } else {
                    format!("{lower} or {upper}")
                };
                let fam = family.map_or(String::new(), |f| format!(" for {f}"));
                cx.error(
                    v.span.clone(),
                    format!(
                        "`{key}` must be a positive multiple of {multiple}{fam}, not {}",
                        v.value
                    ),
                    "",
                    Some(format!("use {choices}")),
                );
                fine = false;
            }
            v.value
        };
        let width = size("width", pick(&job.width, &defaults.width));
        let height = size("height", pick(&job.height, &defaults.height));

        let steps_sp = pick(&job.steps, &defaults.steps);
        if let Some(s) = steps_sp.filter(|s| s.value == 0 || s.value > MAX_STEPS) {
            cx.error(
                s.span.clone(),
                format!("`steps` must be 1 to {MAX_STEPS}, not {}", s.value),
                "",
                Some("FLUX dev is usually run with 20–50 steps, schnell with 1–4".into()),
            );
            fine = false;
        }
        let steps = steps_sp.map_or(DEFAULT_STEPS, |s| s.value);
        // Video (Wan) jobs default to what Wan's pipelines use: UniPC (bh2) on diffusers'
        // flow-sigma grid; image jobs to ComfyUI's euler/simple.
        let video = family.is_some_and(Family::is_video);
        let (sampler0, scheduler0) = if video {
            (Sampler::UniPcBh2, Scheduler::FlowSigmas)
        } else {
            (Sampler::Euler, Scheduler::Simple)
        };
        let sampler = pick(&job.sampler, &defaults.sampler).map_or(sampler0, |s| s.value);
        let scheduler = pick(&job.scheduler, &defaults.scheduler).map_or(scheduler0, |s| s.value);
        let guidance_sp = pick(&job.guidance, &defaults.guidance);
        if let Some(g) = guidance_sp.filter(|g| !(0.0..=MAX_SCALE).contains(&g.value)) {
            cx.error(
                g.span.clone(),
                format!("`guidance` must be 0 to {MAX_SCALE}, not {}", g.value),
                "",
                Some("FLUX dev is usually run with guidance 2.5–4".into()),
            );
            fine = false;
        }
        let guidance = guidance_sp.map_or(DEFAULT_GUIDANCE, |g| g.value);

        let experts = pipeline.as_ref().is_some_and(|p| {
            pipelines
                .iter()
                .any(|(n, rp)| n.value == *p && rp.value.diffusion_low_noise.is_some())
        });
        let init_image = match &job.init_image {
            Some(p) => match check_path(cx, p, PathKind::Other) {
                Some(s) => Some(resolve(dir, s)),
                None => {
                    fine = false;
                    None
                }
            },
            None => None,
        };
        let denoise = match (&job.init_image, &job.denoise, &defaults.denoise) {
            // Image-to-video keeps the init image as the first frame and starts from noise.
            (Some(_), Some(d), _) if video => {
                cx.error(
                    d.span.clone(),
                    "`denoise` is for img2img; image-to-video has no denoise strength",
                    "",
                    Some("remove `denoise`: image-to-video keeps `init_image` as the first frame and generates the rest from pure noise".into()),
                );
                fine = false;
                1.0
            }
            (Some(_), _, _) if video => 1.0,
            (None, Some(d), _) => {
                cx.error(
                    d.span.clone(),
                    "`denoise` without `init_image`",
                    "",
                    Some("denoise is how much of `init_image` is replaced; a job without one starts from pure noise (denoise 1)".into()),
                );
                fine = false;
                1.0
            }
            (None, None, _) => 1.0,
            (Some(_), j, d) => match j.as_ref().or(d.as_ref()) {
                Some(d) if !(d.value > 0.0 && d.value <= 1.0) => {
                    cx.error(
                        d.span.clone(),
                        format!(
                            "`denoise` must be more than 0 and at most 1, not {}",
                            d.value
                        ),
                        "",
                        Some("0.3 keeps most of the image, 1 replaces it entirely".into()),
                    );
                    fine = false;
                    1.0
                }
                Some(d) => d.value,
                None => DEFAULT_DENOISE,
            },
        };
        let batch_sp = pick(&job.batch, &defaults.batch);
        if let Some(b) = batch_sp.filter(|b| b.value == 0 || b.value > MAX_BATCH) {
            cx.error(
                b.span.clone(),
                format!("`batch` must be 1 to {MAX_BATCH}, not {}", b.value),
                "",
                Some("leave `batch` out to let mgpu choose from free memory".into()),
            );
            fine = false;
        }

        let fam_name = family.map_or("this family", Family::name);
        // Video keys: frames (4k+1) and fps for video families; refused for image families.
        let frames_sp = pick(&job.frames, &defaults.frames);
        let frames = match frames_sp {
            Some(f) if video && f.value > MAX_FRAMES => {
                cx.error(
                    f.span.clone(),
                    format!("`frames` must be at most {MAX_FRAMES}, not {}", f.value),
                    "",
                    Some(format!("Wan makes {DEFAULT_FRAMES} frames (about 5 s at 16 fps); make longer videos from several jobs")),
                );
                fine = false;
                f.value
            }
            Some(f) if video && (f.value == 0 || f.value % 4 != 1) => {
                let lower = f.value.saturating_sub(1) / 4 * 4 + 1;
                cx.error(
                    f.span.clone(),
                    format!("`frames` must be 4k+1 (1, 5, 9, …, 81, …) for {fam_name}, not {}", f.value),
                    "",
                    Some(format!(
                        "the video autoencoder compresses 4 frames into one latent frame after the first: use {lower} or {}",
                        lower + 4
                    )),
                );
                fine = false;
                f.value
            }
            Some(f) if !video && f.value != 1 => {
                cx.error(
                    f.span.clone(),
                    format!("`frames` is for video families (wan); {fam_name} makes images"),
                    "",
                    Some(
                        "remove `frames`, or use a pipeline whose diffusion model is a video model"
                            .into(),
                    ),
                );
                fine = false;
                1
            }
            Some(f) => f.value,
            None if video => DEFAULT_FRAMES,
            None => 1,
        };
        let fps = match pick(&job.fps, &defaults.fps) {
            Some(f) if !video => {
                cx.error(
                    f.span.clone(),
                    format!("`fps` is for video families (wan); {fam_name} makes images"),
                    "",
                    Some("remove `fps`".into()),
                );
                fine = false;
                None
            }
            Some(f) if !(1..=240).contains(&f.value) => {
                cx.error(
                    f.span.clone(),
                    format!("`fps` must be 1 to 240, not {}", f.value),
                    "",
                    Some(format!("Wan 2.1 makes {DEFAULT_FPS} frames per second")),
                );
                fine = false;
                None
            }
            Some(f) => Some(f.value),
            None => video.then_some(DEFAULT_FPS),
        };
        // Image-to-video runs on Wan 2.2 A14B's I2V experts (a two-expert pipeline) or on
        // Wan 2.2 TI2V-5B (one model); which kind the weights are is checked when they are
        // read (a text-to-video model fails the job there, a Wan 2.1 I2V file the load).
        let cfg_sp = pick(&job.cfg, &defaults.cfg);
        if let Some(c) = cfg_sp.filter(|c| !(0.0..=MAX_SCALE).contains(&c.value)) {
            cx.error(
                c.span.clone(),
                format!("`cfg` must be a number 0 to {MAX_SCALE}, not {}", c.value),
                "",
                Some("1 turns classifier-free guidance off; Wan is usually run at 5–6".into()),
            );
            fine = false;
        }
        let cfg = cfg_sp.map_or(if video { DEFAULT_CFG_VIDEO } else { 1.0 }, |c| c.value);
        let cfg_low_noise = match pick(&job.cfg_low_noise, &defaults.cfg_low_noise) {
            Some(c) if !(0.0..=MAX_SCALE).contains(&c.value) => {
                cx.error(
                    c.span.clone(),
                    format!(
                        "`cfg_low_noise` must be a number 0 to {MAX_SCALE}, not {}",
                        c.value
                    ),
                    "",
                    Some("Wan 2.2's text-to-video uses 3 on the low-noise expert".into()),
                );
                fine = false;
                None
            }
            Some(c) if !experts => {
                // A `[defaults]` value only matters to jobs of two-expert pipelines.
                if job.cfg_low_noise.is_some() {
                    cx.error(
                        c.span.clone(),
                        "`cfg_low_noise` is for pipelines with two experts",
                        "",
                        Some("give the job's pipeline a `diffusion_low_noise` (Wan 2.2 A14B), or remove `cfg_low_noise`".into()),
                    );
                    fine = false;
                }
                None
            }
            Some(c) => Some(c.value),
            None => None,
        };
        let negative_sp = pick(&job.negative_prompt, &defaults.negative_prompt);
        let unguided = cfg == 1.0 && cfg_low_noise.is_none_or(|c| c == 1.0);
        if let (Some(n), true) = (negative_sp, unguided) {
            let mut d = Diagnostic::warning(format!(
                "job `{name}`: `negative_prompt` has no effect with `cfg = 1`"
            ))
            .at(&cx.src, n.span.clone(), "ignored");
            d = d.with_help("set `cfg` above 1 (true classifier-free guidance evaluates the negative prompt at every step)");
            cx.push(d);
        }
        let shift_sp = pick(&job.shift, &defaults.shift);
        if let Some(sh) = shift_sp.filter(|sh| !(sh.value > 0.0 && sh.value <= MAX_SCALE)) {
            cx.error(
                sh.span.clone(),
                format!("`shift` must be a number above 0 and at most {MAX_SCALE}, not {}", sh.value),
                "",
                Some("leave `shift` out to use the model's own (Wan: 5, FLUX dev: from the image size)".into()),
            );
            fine = false;
        }

        // Latent tokens of one image or video: what attention and the latents scale with.
        let tokens = (width as u64).div_ceil(16)
            * (height as u64).div_ceil(16)
            * ((frames.max(1) as u64 - 1) / 4 + 1);
        if fine && tokens > MAX_TOKENS {
            let span = pick(&job.width, &defaults.width)
                .or(pick(&job.height, &defaults.height))
                .or(frames_sp)
                .map_or(header.clone(), |s| s.span.clone());
            cx.error(
                span,
                format!(
                    "{width}×{height}{} is {tokens} latent tokens; at most {MAX_TOKENS} fit",
                    if video { format!(" × {frames} frames") } else { String::new() }
                ),
                "",
                Some("each 16×16 pixels (and each 4 frames) is one token: make the image smaller or the video shorter".into()),
            );
            fine = false;
        }

        let output = match pick(&job.output, &defaults.output) {
            Some(o) => match OutputTemplate::parse(&o.value) {
                Ok(t) => {
                    if count > 1
                        && !t.uses(crate::manifest::template::Var::Seed)
                        && !t.uses(crate::manifest::template::Var::Index)
                    {
                        cx.error(
                            o.span.clone(),
                            format!("job `{name}` makes {count} images but `output` has no `{{seed}}` or `{{index}}`"),
                            "every image would be written here",
                            Some(format!("add `{{seed}}` or `{{index}}`, like `output = \"{}\"`", t.with_seed())),
                        );
                        fine = false;
                    }
                    let vars = crate::manifest::template::Vars {
                        seed,
                        index: 0,
                        job: &name,
                        pipeline: pipeline.as_deref().unwrap_or(""),
                        width,
                        height,
                        steps,
                        sampler: sampler.name(),
                        scheduler: scheduler.name(),
                    };
                    fine &= file_names_fit(cx, &o.span, &t, &vars, count);
                    let ext = t.extension();
                    if !video && ext != "png" {
                        cx.error(
                            o.span.clone(),
                            format!("{fam_name} makes images: the output must end in `.png`, not `.{ext}`"),
                            "",
                            Some("`.apng` and `.mp4` are for video families (wan)".into()),
                        );
                        fine = false;
                    }
                    if video && ext == "mp4" && crate::output::Ffmpeg::find().is_none() {
                        cx.error(
                            o.span.clone(),
                            "`.mp4` outputs need `ffmpeg`, which is not on PATH (nor named by MGPU_FFMPEG)",
                            "",
                            Some("install ffmpeg (e.g. `apt install ffmpeg`), or write lossless animated PNGs: end the template in `.png` or `.apng`".into()),
                        );
                        fine = false;
                    }
                    Some(t)
                }
                Err(errors) => {
                    for e in errors {
                        let span = cx.content(&o.span, e.span);
                        cx.error(span, e.message, "", Some(e.help));
                    }
                    None
                }
            },
            None => OutputTemplate::parse(DEFAULT_OUTPUT).ok(),
        };

        match (pipeline, &job.prompt, output) {
            (Some(pipeline), Some(prompt), Some(output)) if fine => out.push(Job {
                index: i,
                name,
                pipeline,
                prompt: prompt.value.clone(),
                seed,
                count,
                width,
                height,
                steps,
                sampler,
                scheduler,
                guidance,
                output,
                output_root: output_root.to_path_buf(),
                init_image,
                denoise,
                batch: batch_sp.map(|b| b.value),
                negative_prompt: negative_sp.map(|n| n.value.clone()),
                cfg,
                cfg_low_noise,
                shift: shift_sp.map(|s| s.value),
                frames,
                fps,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// The longest file or folder name most filesystems take (ext4, XFS, APFS, NTFS: 255).
pub const MAX_NAME_BYTES: usize = 255;
/// What the output writer adds to a file name for its temporary file: `.NAME.XXXXXX.tmp`.
pub const TEMP_NAME_EXTRA: usize = ".".len() + ".".len() + 6 + ".tmp".len();

/// NUL characters and names too long for the filesystem (counting the temporary file's
/// extra characters), for the longest name any image of the job renders to.
fn file_names_fit(
    cx: &mut Cx,
    span: &Range<usize>,
    t: &OutputTemplate,
    vars: &crate::manifest::template::Vars<'_>,
    count: u32,
) -> bool {
    use crate::manifest::template::Tok;
    let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    let last = count.saturating_sub(1);
    let seed = vars.seed;
    let toks = t.shape(vars);
    if toks.contains(&Tok::Char('\0')) {
        cx.error(
            span.clone(),
            "NUL character in an output path",
            "",
            Some("file names cannot hold NUL (`\\u0000`): remove it".into()),
        );
        return false;
    }
    let comps: Vec<&[Tok]> = toks.split(|t| *t == Tok::Char('/')).collect();
    for (i, comp) in comps.iter().enumerate() {
        let len: usize = comp
            .iter()
            .map(|t| match t {
                Tok::Char(c) => c.len_utf8(),
                Tok::Seed(w) => (*w).max(digits(seed.saturating_add(last as u64))),
                Tok::Index(w) => (*w).max(digits(last as u64)),
            })
            .sum();
        let file = i + 1 == comps.len();
        let max = if file {
            MAX_NAME_BYTES - TEMP_NAME_EXTRA
        } else {
            MAX_NAME_BYTES
        };
        if len > max {
            cx.error(
                span.clone(),
                format!(
                    "a {} name of this output path would be {len} bytes long; at most {max} fit",
                    if file { "file" } else { "folder" }
                ),
                "",
                Some(if file {
                    format!("filesystems take names of up to {MAX_NAME_BYTES} bytes, and mgpu writes each output first to `.NAME.XXXXXX.tmp` ({TEMP_NAME_EXTRA} more): shorten the name")
                } else {
                    format!("filesystems take names of up to {MAX_NAME_BYTES} bytes: shorten the folder's name")
                }),
            );
            return false;
        }
    }
    true
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
