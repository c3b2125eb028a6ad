//! The diffusion model(s) a batch samples with: one model, or Wan 2.2 A14B's two experts
//! taking turns within one sampling run.
//!
//! The high-noise expert (the pipeline's `diffusion`) evaluates every step whose *starting*
//! timestep `1000·σ_i` is at least `1000 · boundary`; the low-noise expert
//! (`diffusion_low_noise`) the others — diffusers' `WanPipeline` (`t >= boundary_ratio ·
//! num_train_timesteps`) and Wan 2.2's `generate.py` choose the same way, and so does a
//! ComfyUI graph that splits the σ schedule between two samplers. All evaluations of a step
//! (Heun's second one included) use the step's expert. Since σ falls monotonically, a task
//! switches once.
//!
//! How a switch moves memory is the plan's decision ([`crate::plan::SwitchPlan`]): when both
//! experts fit side by side they stay loaded; otherwise the executor *swaps*: it releases the
//! expert it leaves (its compute-device and host memory) before loading the one it needs,
//! through the ordinary load → patch → distribute path, so the values are those of a run
//! with that expert alone. A batch whose tasks sit on both sides of the boundary in one
//! round (different step counts or shifts) runs the high-noise expert's evaluations first.

use std::collections::HashMap;
use std::time::Instant;

use super::family::{self, Denoiser};
use super::models::Ctx;
use crate::exec::{Event, ExecError};

/// The models of one pipeline's diffusion stage, loaded on demand.
pub(crate) struct Experts<'a> {
    cx: &'a mut Ctx,
    loaded: &'a mut HashMap<String, Box<dyn Denoiser>>,
    /// Model names: one, or `[high, low]`.
    names: Vec<String>,
    /// The switch, a fraction of 1000 timesteps.
    boundary: f64,
    /// Both experts may be loaded at once (the plan's `resident_both`).
    together: bool,
    /// The config of each expert seen, to check that both have one shape.
    configs: &'a mut HashMap<String, String>,
}

impl<'a> Experts<'a> {
    /// `names`: the diffusion model, or the high- and low-noise experts; `boundary` the
    /// switch as a fraction of 1000 timesteps (ignored for one model).
    pub fn new(
        cx: &'a mut Ctx,
        loaded: &'a mut HashMap<String, Box<dyn Denoiser>>,
        configs: &'a mut HashMap<String, String>,
        names: Vec<String>,
        boundary: f64,
        together: bool,
    ) -> Self {
        Experts {
            cx,
            loaded,
            names,
            boundary,
            together,
            configs,
        }
    }

    /// The models' names for reports: `name`, or `high+low`.
    pub fn label(&self) -> String {
        self.names.join("+")
    }

    /// The number of models (1 or 2).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Which model evaluates a step that starts at model timestep `t`: 0 (the only model,
    /// or the high-noise expert) or 1 (the low-noise expert).
    pub fn pick(&self, t: f64) -> usize {
        if self.names.len() == 1 || crate::sample::high_noise_expert(t, self.boundary) {
            0
        } else {
            1
        }
    }

    /// A loaded model, for what the experts share (device, latent shape, sampling): the first
    /// loaded, else the first model, loaded now.
    pub fn any(&mut self, events: &mut dyn FnMut(Event)) -> Result<&dyn Denoiser, ExecError> {
        let i = (0..self.names.len())
            .find(|&i| self.loaded.contains_key(&self.names[i]))
            .unwrap_or(0);
        Ok(self.get(i, events)?)
    }

    /// Model `i`, loaded if it is not; when the experts do not stay loaded together, the
    /// other expert is released first.
    pub fn get(
        &mut self,
        i: usize,
        events: &mut dyn FnMut(Event),
    ) -> Result<&mut dyn Denoiser, ExecError> {
        let name = self.names[i].clone();
        if !self.loaded.contains_key(&name) {
            let t0 = Instant::now();
            let mut released = Vec::new();
            if !self.together {
                for (j, other) in self.names.iter().enumerate() {
                    if j != i && self.loaded.remove(other).is_some() {
                        released.push(other.clone());
                    }
                }
            }
            let m = family::load_diffusion(self.cx, &name, events)?;
            let cfg = m.config_text();
            for (other, c) in self.configs.iter() {
                if self.names.contains(other) && *other != name && *c != cfg {
                    return Err(ExecError::Load(format!(
                        "experts `{other}` and `{name}` have different shapes; both experts of a pipeline must be the same architecture (`{other}`: {c}; `{name}`: {cfg})"
                    )));
                }
            }
            self.configs.insert(name.clone(), cfg);
            self.loaded.insert(name.clone(), m);
            if !released.is_empty() {
                events(Event::Note {
                    message: format!(
                        "expert switch: released `{}`, loaded `{name}` in {:.2} s",
                        released.join("`, `"),
                        t0.elapsed().as_secs_f64()
                    ),
                });
            }
        }
        self.loaded
            .get_mut(&name)
            .map(|m| m.as_mut() as &mut dyn Denoiser)
            .ok_or_else(|| ExecError::Other(format!("model `{name}` not loaded (a bug)")))
    }
}
