//! `mgpu bench --model NAME`: the benchmarked model shapes, one family config per name, and
//! what the harness asks of them (checkpoint layout, placement units, the run itself).

use anyhow::bail;
use candle_core::Device;

use crate::exec::bench::{self, BenchConfig};
use crate::exec::distribute::Pools;
use crate::family::Family;
use crate::models::spec as mspec;
use crate::models::{flux, wan};

/// A benchmarked model shape: its family's config.
#[derive(Debug, Clone)]
pub enum BenchModel {
    Flux(flux::Config),
    Wan(wan::Config),
}

/// The `--model` names and what they are.
pub const MODELS: &str = "dev, schnell, tiny (FLUX); wan14b, wan1.3b, wan-tiny (Wan 2.1 T2V); wan22-a14b, wan22-tiny (Wan 2.2 A14B's two experts, switching at boundary 0.875); ti2v-5b, ti2v-tiny (Wan 2.2 TI2V-5B: 48 channels, the Wan 2.2 VAE's 16× latent, sizes multiples of 32)";

/// The expert boundary of a `--model` name (Wan 2.2 A14B T2V's), `None` for one model.
pub fn experts_of(name: &str) -> Option<f64> {
    name.starts_with("wan22-").then_some(0.875)
}

impl BenchModel {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "dev" => BenchModel::Flux(flux::Config::dev()),
            "schnell" => BenchModel::Flux(flux::Config::schnell()),
            "tiny" => BenchModel::Flux(flux::Config::tiny()),
            "wan14b" => BenchModel::Wan(wan::Config::t2v_14b()),
            "wan1.3b" => BenchModel::Wan(wan::Config::t2v_1_3b()),
            "wan-tiny" => BenchModel::Wan(wan::Config::tiny()),
            // Wan 2.2 A14B: two experts of the Wan 2.1 14B shape.
            "wan22-a14b" => BenchModel::Wan(wan::Config::t2v_14b()),
            "wan22-tiny" => BenchModel::Wan(wan::Config::tiny()),
            // TI2V-5B's text-to-video step (one scalar timestep per evaluation; its
            // image-to-video step computes the same, with frame 0's tokens at timestep 0).
            "ti2v-5b" => BenchModel::Wan(wan::Config::ti2v_5b()),
            "ti2v-tiny" => BenchModel::Wan(wan::Config::tiny_ti2v()),
            other => bail!("--model `{other}`: expected one of {MODELS}"),
        })
    }

    pub fn family(&self) -> Family {
        match self {
            BenchModel::Flux(_) => Family::Flux,
            BenchModel::Wan(_) => Family::Wan,
        }
    }

    /// What width and height must be multiples of: the VAE's stride times the patch (16 for
    /// FLUX and Wan 2.1's VAE, 32 for TI2V-5B's Wan 2.2 VAE).
    pub fn size_multiple(&self) -> usize {
        match self {
            BenchModel::Flux(c) => {
                <flux::FluxDit as mspec::DiffusionModel>::size_multiple(c) as usize
            }
            BenchModel::Wan(c) => <wan::WanDit as mspec::DiffusionModel>::size_multiple(c) as usize,
        }
    }

    /// Names and shapes of the model's checkpoint.
    pub(super) fn layout(
        &self,
    ) -> candle_core::Result<std::collections::BTreeMap<String, Vec<usize>>> {
        match self {
            BenchModel::Flux(c) => mspec::diffusion_layout::<flux::FluxDit>(c),
            BenchModel::Wan(c) => mspec::diffusion_layout::<wan::WanDit>(c),
        }
    }

    pub(super) fn units(&self) -> Vec<String> {
        match self {
            BenchModel::Flux(c) => flux::FluxDit::units(c),
            BenchModel::Wan(c) => wan::WanDit::units(c),
        }
    }

    pub(super) fn run(
        &self,
        cfg: &BenchConfig,
        device: &Device,
        cache_dir: &std::path::Path,
        pools: &mut Pools,
        progress: impl FnMut(&str),
    ) -> Result<bench::BenchReport, crate::exec::engine::EngineError> {
        match self {
            BenchModel::Flux(c) => {
                bench::run::<flux::FluxDit>(c, cfg, device, cache_dir, pools, progress)
            }
            BenchModel::Wan(c) => {
                bench::run::<wan::WanDit>(c, cfg, device, cache_dir, pools, progress)
            }
        }
    }
}
