//! The streaming engine on the CPU: one engine pass (every FLUX block applied to every job of
//! the batch, as the executor's denoising step does) with all blocks resident versus all
//! blocks streamed from host memory (bf16 bytes, fetched and converted to f32 on the fetch
//! thread into K = 2 slots), in two regimes:
//!
//! - `compute_bound`: hidden 256, 2 + 2 blocks, 2 jobs of 64 image + 256 text tokens: a block
//!   computes far longer than its fetch takes, so the plan's condition for hiding the copy
//!   (copy time per block ≤ compute time per block, with a slot ahead) holds and the fetch
//!   wait should be ≈ 0;
//! - `fetch_bound`: the same weights, 1 job of 1 image + 4 text tokens: compute per block is
//!   tiny, the fetch cannot hide, and the wait shows.
//!
//! Criterion times the passes; the engine's own [`PassStats`] of every timed pass are summed
//! and the wait fraction (Σ wait / Σ pass time) is printed per case, with the measured fetch
//! time of one block (its conversion alone) and compute time per block (resident pass / 4).
//! Results: benches/RESULTS.md.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion};
use mgpu::exec::cpu::CpuBackend;
use mgpu::exec::engine::{Backend, Engine, EngineError, EngineUnit, Home, PassStats};
use mgpu::exec::unit::{Bytes, HostTensor, UnitData};
use mgpu::models::flux::{self, FluxDit};
use mgpu::models::tiny;

fn config() -> flux::Config {
    flux::Config {
        in_channels: 64,
        vec_in_dim: 64,
        context_in_dim: 64,
        hidden_size: 256,
        mlp_ratio: 4.0,
        num_heads: 4,
        depth: 2,
        depth_single_blocks: 2,
        axes_dim: vec![16, 24, 24],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// A block's tensors materialised on the compute device, by name.
type Materialised = Arc<HashMap<String, Tensor>>;

struct Model {
    cfg: flux::Config,
    dit: FluxDit,
    /// Per block: the stored (bf16) bytes, and the same materialised in f32.
    blocks: Vec<(Arc<UnitData>, Materialised)>,
}

fn model() -> Model {
    let cfg = config();
    let units = FluxDit::units(&cfg);
    let layout = tiny::flux_layout(&cfg).unwrap();
    let mut resident = HashMap::new();
    let mut blocks: Vec<UnitData> = units
        .iter()
        .map(|u| UnitData {
            name: u.clone(),
            tensors: Vec::new(),
        })
        .collect();
    for (name, shape) in &layout {
        let v = tiny::init_values(0, name, shape);
        match units
            .iter()
            .position(|u| name.starts_with(&format!("{u}.")))
        {
            Some(i) => {
                let bytes: Vec<u8> = v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect();
                blocks[i].tensors.push(HostTensor {
                    name: name[units[i].len() + 1..].to_string(),
                    dtype: DType::BF16,
                    shape: shape.clone(),
                    bytes: Bytes::Owned(Arc::from(bytes)),
                    quant: None,
                    scale: None,
                    lora: None,
                });
            }
            None => {
                let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                resident.insert(name.clone(), t);
            }
        }
    }
    let dit = FluxDit::new(
        &cfg,
        VarBuilder::from_tensors(resident, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let blocks = blocks
        .into_iter()
        .map(|b| {
            let m = b.materialize(&Device::Cpu, DType::F32).unwrap();
            (Arc::new(b), Arc::new(m))
        })
        .collect();
    Model { cfg, dit, blocks }
}

fn engine(m: &Model, streamed: bool) -> Engine<Box<dyn Backend>> {
    let units: Vec<EngineUnit> = m
        .blocks
        .iter()
        .map(|(data, mat)| EngineUnit {
            name: data.name.clone(),
            home: if streamed {
                Home::Streamed {
                    data: data.clone(),
                    link: 0,
                }
            } else {
                Home::Resident(mat.clone())
            },
        })
        .collect();
    let links = if streamed {
        vec!["cpu→cpu".to_string()]
    } else {
        vec![]
    };
    let backend: Box<dyn Backend> = Box::new(CpuBackend::new(&links, 2, DType::F32).unwrap());
    Engine::new(units, 2, backend, Device::Cpu, DType::F32).unwrap()
}

/// Prepared per-job states for `jobs` jobs of `img × img` latent pixels and `txt` tokens.
fn states(m: &Model, jobs: usize, img: usize, txt: usize) -> Vec<flux::State> {
    (0..jobs)
        .map(|j| {
            let seed = j as u64 + 1;
            let t = |name: &str, shape: &[usize]| {
                Tensor::from_vec(tiny::init_values(seed, name, shape), shape, &Device::Cpu).unwrap()
            };
            let latent = t("latent", &[1, 16, img, img]);
            let text = t("txt", &[1, txt, 64]);
            let vec = t("vec", &[1, 64]);
            m.dit.prepare(&latent, &text, &vec, 0.7, Some(3.5)).unwrap()
        })
        .collect()
}

fn pass(m: &Model, e: &mut Engine<Box<dyn Backend>>, prepared: &[flux::State]) -> PassStats {
    let mut st = prepared.to_vec();
    e.pass(|i, w| {
        let block = FluxDit::build_unit(&m.cfg, i, w.var_builder())?;
        for s in st.iter_mut() {
            m.dit.run_block(&block, s)?;
        }
        Ok::<_, EngineError>(())
    })
    .unwrap()
}

fn engine_pass(c: &mut Criterion) {
    let m = model();
    let fetch_one = {
        let t0 = Instant::now();
        for _ in 0..10 {
            std::hint::black_box(m.blocks[0].0.materialize(&Device::Cpu, DType::F32).unwrap());
        }
        t0.elapsed().as_secs_f64() / 10.0
    };
    let block_bytes = m.blocks[0].0.bytes();
    let cases = [("compute_bound", 2, 16, 256), ("fetch_bound", 1, 2, 4)];
    let mut group = c.benchmark_group("engine_pass");
    group.sample_size(10);
    let mut lines = Vec::new();
    for (case, jobs, img, txt) in cases {
        let prepared = states(&m, jobs, img, txt);
        for (placement, streamed) in [("resident", false), ("host", true)] {
            let mut e = engine(&m, streamed);
            let totals = RefCell::new((0.0f64, 0.0f64, 0usize));
            group.bench_function(format!("{case}/{placement}"), |b| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let s = pass(&m, &mut e, &prepared);
                        t += Duration::from_secs_f64(s.seconds);
                        let mut tot = totals.borrow_mut();
                        tot.0 += s.seconds;
                        tot.1 += s.wait_seconds;
                        tot.2 += 1;
                    }
                    t
                })
            });
            let (secs, wait, n) = *totals.borrow();
            if n == 0 {
                continue; // filtered out on the command line
            }
            lines.push(format!(
                "{case}/{placement}: {n} passes, mean pass {:.2} ms, compute/block {:.2} ms, wait fraction {:.4}",
                secs / n as f64 * 1e3,
                (secs - wait) / n as f64 / 4.0 * 1e3,
                wait / secs
            ));
        }
    }
    group.finish();
    println!(
        "\nfetch of one double block ({:.2} MB bf16 → f32): {:.2} ms",
        block_bytes as f64 / 1e6,
        fetch_one * 1e3
    );
    for l in lines {
        println!("{l}");
    }
}

criterion_group!(benches, engine_pass);
criterion_main!(benches);
