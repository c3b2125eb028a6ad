//! A deterministic stand-in for the pipeline (a test double): tests of the queue, the run
//! report, the CLI glue and golden files use it where no model weights exist. An image's
//! pixels and latent are a function of its prompt, seed and size only — never of its batch —
//! which is the promise the real pipeline keeps (docs/decisions.md §4). Knobs make chosen
//! images fail, the generator fail, or the output drift (for golden mismatches).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exec::{Event, ExecError, Generator, ImageTask, JobError, PassStats, Rendered};
use crate::output::{ImageRecord, RECORD_FORMAT};

/// See the module doc. `Default`: batches of 4, nothing fails, no delay.
#[derive(Debug, Clone)]
pub struct FakeGenerator {
    /// What [`Generator::max_batch`] answers.
    pub max_batch: usize,
    /// Images with these seeds fail alone ([`JobError`]).
    pub fail_seeds: BTreeSet<u64>,
    /// The `n`-th call of `run_batch` (from 0) fails the whole generator.
    pub fail_on_batch: Option<usize>,
    /// `prepare` fails (a model that cannot load).
    pub fail_prepare: bool,
    /// Sleep per step (so a test can kill a run mid-way).
    pub step_delay: Duration,
    /// Sets the flag after the `n`-th batch (from 0): simulates Ctrl-C.
    pub interrupt_after: Option<(usize, Arc<AtomicBool>)>,
    /// Moves one pixel value in every 7 by this much (up below 128, down from 128; keep it
    /// under 128), and adds `latent_delta` to every latent value: a drifted machine or a
    /// changed kernel.
    pub pixel_delta: u8,
    pub latent_delta: f32,
    /// What it was asked, as `job#index`: one list per `prepare` call and per batch.
    pub prepared: Vec<Vec<String>>,
    pub batches: Vec<Vec<String>>,
}

impl Default for FakeGenerator {
    fn default() -> Self {
        FakeGenerator {
            max_batch: 4,
            fail_seeds: BTreeSet::new(),
            fail_on_batch: None,
            fail_prepare: false,
            step_delay: Duration::ZERO,
            interrupt_after: None,
            pixel_delta: 0,
            latent_delta: 0.0,
            prepared: Vec::new(),
            batches: Vec::new(),
        }
    }
}

fn label(t: &ImageTask) -> String {
    format!("{}#{}", t.job.name, t.image.index)
}

/// SplitMix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl FakeGenerator {
    /// The image the fake makes for `task` (without the deltas).
    pub fn image_of(task: &ImageTask) -> (image::RgbImage, Vec<f32>, Vec<usize>) {
        let mut key = task.image.seed;
        for b in task.job.prompt.bytes() {
            key = mix(key ^ b as u64);
        }
        let (w, h) = (task.job.width, task.job.height);
        let rgb = image::RgbImage::from_fn(w, h, |x, y| {
            let v = mix(key ^ ((y as u64) << 32 | x as u64));
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let shape = vec![1, 16, (h / 8).max(1) as usize, (w / 8).max(1) as usize];
        let n: usize = shape.iter().product();
        let latent = (0..n)
            .map(|i| {
                ((mix(key.wrapping_add(i as u64)) >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        (rgb, latent, shape)
    }

    fn record(task: &ImageTask) -> ImageRecord {
        let j = &task.job;
        ImageRecord {
            format: RECORD_FORMAT,
            mgpu_version: env!("CARGO_PKG_VERSION").into(),
            job: j.name.clone(),
            prompt: j.prompt.clone(),
            negative_prompt: None,
            seed: task.image.seed,
            sampler: j.sampler,
            scheduler: j.scheduler,
            steps: j.steps,
            cfg_scale: 1.0,
            cfg_scale_low_noise: None,
            expert_boundary: None,
            guidance: Some(j.guidance),
            denoise: j.denoise,
            init_image: None,
            init_image_sha256: None,
            shift: None,
            width: j.width,
            height: j.height,
            frames: None,
            fps: None,
            models: vec![],
            loras: vec![],
            job_hash: None,
        }
    }
}

impl Generator for FakeGenerator {
    fn prepare(
        &mut self,
        tasks: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ExecError> {
        self.prepared.push(tasks.iter().map(label).collect());
        events(Event::Stage {
            model: "fake".into(),
            stage: "loading".into(),
        });
        if self.fail_prepare {
            return Err(ExecError::Load(
                "fake: cannot load model `fake` from fake.safetensors".into(),
            ));
        }
        events(Event::Loaded {
            model: "fake".into(),
            measured: vec![("cpu".into(), 1000), ("disk".into(), 24)],
        });
        Ok(())
    }

    fn run_batch(
        &mut self,
        batch: &[ImageTask],
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<Result<Rendered, JobError>>, ExecError> {
        let n = self.batches.len();
        self.batches.push(batch.iter().map(label).collect());
        if self.fail_on_batch == Some(n) {
            return Err(ExecError::Other(format!(
                "fake: the engine failed in batch {n}"
            )));
        }
        let started = Instant::now();
        let steps = batch[0].job.steps;
        for step in 1..=steps {
            std::thread::sleep(self.step_delay);
            events(Event::Step {
                step,
                steps,
                passes: vec![PassStats {
                    seconds: 0.01,
                    wait_seconds: 0.001,
                    link_bytes: vec![24],
                    fetched_units: 1,
                }],
            });
        }
        if let Some((after, flag)) = &self.interrupt_after {
            if *after == n {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let seconds = started.elapsed().as_secs_f64() / batch.len() as f64;
        Ok(batch
            .iter()
            .map(|t| {
                if self.fail_seeds.contains(&t.image.seed) {
                    return Err(JobError::new(format!(
                        "fake: the prompt of seed {} is too long",
                        t.image.seed
                    )));
                }
                let (mut rgb, mut latent, latent_shape) = Self::image_of(t);
                if self.pixel_delta != 0 {
                    for (i, v) in rgb.iter_mut().enumerate() {
                        if i % 7 == 0 {
                            *v = if *v < 128 {
                                *v + self.pixel_delta
                            } else {
                                *v - self.pixel_delta
                            };
                        }
                    }
                }
                latent.iter_mut().for_each(|v| *v += self.latent_delta);
                Ok(Rendered {
                    frames: vec![rgb],
                    latent,
                    latent_shape,
                    record: Self::record(t),
                    seconds,
                })
            })
            .collect())
    }

    fn max_batch(&self, _task: &ImageTask) -> usize {
        self.max_batch
    }
}
