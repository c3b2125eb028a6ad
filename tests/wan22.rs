//! Wan 2.2 A14B's two experts (issue 15): the switching rule against diffusers' WanPipeline
//! (tests/fixtures/parity/wan22/switch.json, from tools/parity_wan22.py), and the tiny
//! two-expert pipeline (manifests/tiny/wan22-{high,low}-noise-tiny.safetensors, from
//! `mgpu make-tiny wan --experts`) through the executor: the experts switch once per task at
//! the boundary; every placement, and both ways of switching (both loaded, or release and
//! reload), give the same bits; a boundary that keeps one expert for every step gives exactly
//! that expert's single-model run.

mod exec_common;

use std::path::Path;
use std::sync::Arc;

use exec_common::{assert_same, load, options, tasks, Run, HW};
use mgpu::exec::pipeline::{generator, PipelineOptions, UnitHome};
use mgpu::exec::{ImageTask, JobError, Rendered};
use mgpu::manifest::Manifest;
use mgpu::sample::{high_noise_expert, schedule, ModelSampling, Scheduler};
use mgpu::{hardware, plan};

#[derive(serde::Deserialize)]
struct SwitchCase {
    shift: f64,
    steps: u32,
    boundary: f64,
    timesteps: Vec<i64>,
    high_noise: Vec<bool>,
}

#[derive(serde::Deserialize)]
struct SwitchFixture {
    cases: Vec<SwitchCase>,
}

#[test]
fn the_expert_of_each_step_is_diffusers_choice() {
    let text = std::fs::read_to_string("tests/fixtures/parity/wan22/switch.json").unwrap();
    let f: SwitchFixture = serde_json::from_str(&text).unwrap();
    assert_eq!(f.cases.len(), 36);
    let mut switched = 0;
    for c in &f.cases {
        let ms = ModelSampling::wan(c.shift).unwrap();
        let sigmas = schedule(&ms, Scheduler::FlowSigmas, c.steps, 1.0).unwrap();
        let what = format!(
            "shift {} steps {} boundary {}",
            c.shift, c.steps, c.boundary
        );
        let ours: Vec<bool> = sigmas[..c.steps as usize]
            .iter()
            .map(|&s| high_noise_expert(ms.timestep(s), c.boundary))
            .collect();
        assert_eq!(ours, c.high_noise, "{what}");
        // The same timesteps diffusers compares (it truncates them to integers).
        let ts: Vec<i64> = sigmas[..c.steps as usize]
            .iter()
            .map(|&s| ms.timestep(s) as i64)
            .collect();
        assert_eq!(ts, c.timesteps, "{what}");
        if c.high_noise.contains(&false) && c.high_noise.contains(&true) {
            switched += 1;
        }
    }
    assert!(
        switched >= 30,
        "most cases switch within the run: {switched}"
    );
}

fn manifest(out: &Path, pipeline: &str, jobs: &str) -> Arc<Manifest> {
    manifest_with(out, pipeline, jobs, "", "")
}

/// `high_extra` / `low_extra` are added to the experts' tables (LoRAs).
fn manifest_with(
    out: &Path,
    pipeline: &str,
    jobs: &str,
    high_extra: &str,
    low_extra: &str,
) -> Arc<Manifest> {
    load(&format!(
        r#"
[settings]
output_root = "{out}"
compute = "cpu"

[models.wan_high]
family = "wan"
file = "tiny/wan22-high-noise-tiny.safetensors"
{high_extra}

[models.wan_low]
family = "wan"
file = "tiny/wan22-low-noise-tiny.safetensors"
{low_extra}

[models.umt5]
family = "umt5"
file = "tiny/umt5-tiny.safetensors"
tokenizer = "tiny/umt5-tokenizer.json"

[models.vae]
family = "wan-vae"
file = "tiny/wan-vae-tiny.safetensors"

[pipelines.t2v]
text_encoders = ["umt5"]
vae = "vae"
{pipeline}

[defaults]
width = 48
height = 32
frames = 5
steps = 4
shift = 12.0
scheduler = "flow_sigmas"
negative_prompt = "blurry"
{jobs}
"#,
        out = out.display()
    ))
}

const TWO: &str = "diffusion = \"wan_high\"\ndiffusion_low_noise = \"wan_low\"";

const JOBS: &str = r#"
[[jobs]]
name = "fox"
prompt = "a red fox running through snow"
seed = 42
count = 2

[[jobs]]
name = "waves"
prompt = "waves at sunset"
seed = 7
steps = 6
sampler = "heun"
"#;

/// Plans `m` on the CPU, lets `edit` change the plan, runs `batches`.
fn run_with(
    m: &Arc<Manifest>,
    options: PipelineOptions,
    batches: &[&[usize]],
    edit: impl FnOnce(&mut plan::Plan),
) -> Run {
    let hw = hardware::file::parse(Path::new("hw.toml"), HW).unwrap();
    let inv = plan::manifest::read_inventories(m).unwrap_or_else(|d| panic!("{}", d.render(false)));
    let req = plan::manifest::request(m, &inv);
    let mut p = plan::plan(&req, &hw).unwrap_or_else(|e| panic!("{e:?}"));
    edit(&mut p);
    let all = tasks(m);
    let mut events = Vec::new();
    let mut g = generator(m.clone(), Arc::new(p), Arc::new(hw), options).unwrap();
    g.prepare(&all, &mut |e| events.push(e)).unwrap();
    let mut results: Vec<Option<Result<Rendered, JobError>>> =
        (0..all.len()).map(|_| None).collect();
    for b in batches {
        let batch: Vec<ImageTask> = b.iter().map(|&i| all[i].clone()).collect();
        let out = g.run_batch(&batch, &mut |e| events.push(e)).unwrap();
        for (&i, r) in b.iter().zip(out) {
            results[i] = Some(r);
        }
    }
    Run { results, events }
}

fn same_all(a: &Run, b: &Run, n: usize, what: &str) {
    for i in 0..n {
        assert_same(a.ok(i), b.ok(i), &format!("{what}, task {i}"));
        for (k, (fa, fb)) in a.ok(i).frames.iter().zip(&b.ok(i).frames).enumerate() {
            assert!(fa.as_raw() == fb.as_raw(), "{what}, task {i}: frame {k}");
        }
    }
}

fn swap(p: &mut plan::Plan) {
    assert_eq!(p.switches.len(), 1);
    p.switches[0].resident_both = false;
}

fn switch_notes(r: &Run) -> Vec<String> {
    r.notes()
        .into_iter()
        .filter(|n| n.starts_with("expert switch"))
        .map(str::to_string)
        .collect()
}

#[test]
fn experts_switch_once_and_every_placement_gives_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let m = manifest(&out, TWO, JOBS);
    let n = tasks(&m).len();
    assert_eq!(n, 3);
    // The plan: both tiny experts fit side by side on the CPU, so both stay loaded.
    let reference = run_with(&m, options(&cache), &[&[0], &[1], &[2]], |p| {
        assert!(p.switches[0].resident_both)
    });
    assert!(switch_notes(&reference).is_empty());
    // Each step is one pass of one expert: shift 12, 4 flow_sigmas steps → 2 + 2, and the
    // Heun job's 6 steps (two passes each but the last) → passes of both experts.
    let r0 = reference.ok(0);
    assert_eq!(r0.latent_shape, vec![1, 16, 2, 4, 6]);
    let records: Vec<&str> = r0.record.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(records, ["wan_high", "wan_low", "vae", "umt5"]);

    // Swapping (release the first expert, load the second) changes no bit.
    let swapped = run_with(&m, options(&cache), &[&[0], &[1], &[2]], swap);
    same_all(&reference, &swapped, n, "swap");
    let notes = switch_notes(&swapped);
    // Batch 1 switches high → low; batches 2 and 3 go back to high, then to low.
    assert_eq!(notes.len(), 5, "{notes:?}");
    assert!(
        notes[0].contains("released `wan_high`, loaded `wan_low`"),
        "{notes:?}"
    );
    assert!(
        notes[1].contains("released `wan_low`, loaded `wan_high`"),
        "{notes:?}"
    );

    // Batched, streamed from host memory and from disk, swapped: the same bits.
    let mut o = options(&cache);
    for model in ["wan_high", "wan_low"] {
        o = o.with_home(model, "blocks.1", UnitHome::Host);
        o = o.with_home(model, "blocks.0", UnitHome::Disk);
    }
    let streamed = run_with(&m, o.clone(), &[&[0, 1, 2]], |_| {});
    same_all(&reference, &streamed, n, "streamed, one batch");
    let streamed_swap = run_with(&m, o, &[&[2, 0], &[1]], swap);
    same_all(
        &reference,
        &streamed_swap,
        n,
        "streamed, swapped, batches of 2 + 1",
    );
}

#[test]
fn a_boundary_outside_the_schedule_is_the_single_expert_run() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let jobs = "[[jobs]]\nname = \"fox\"\nprompt = \"a red fox\"\nseed = 3\n";
    let single = |name: &str| {
        let m = manifest(&out, &format!("diffusion = \"{name}\""), jobs);
        run_with(&m, options(&cache), &[&[0]], |_| {})
    };
    let (high, low) = (single("wan_high"), single("wan_low"));
    let two = |boundary: &str| {
        let m = manifest(&out, &format!("{TWO}\nboundary = {boundary}"), jobs);
        run_with(&m, options(&cache), &[&[0]], swap)
    };
    // σ_min of 4 flow_sigmas steps at shift 12 is far above 0.01: all high-noise.
    let all_high = two("0.01");
    assert_same(
        all_high.ok(0),
        high.ok(0),
        "boundary 0.01 = the high-noise expert alone",
    );
    assert!(switch_notes(&all_high).is_empty());
    // σ_0 = 1 − 1e-6 is under 0.9999999: all low-noise (loaded once, after the high one).
    let all_low = two("0.9999999");
    assert_same(
        all_low.ok(0),
        low.ok(0),
        "boundary 0.9999999 = the low-noise expert alone",
    );
    // The default boundary (0.875 for these text-to-video weights) switches within the run:
    // the result is neither expert's alone.
    let m = manifest(&out, TWO, jobs);
    let mixed = run_with(&m, options(&cache), &[&[0]], swap);
    assert_ne!(mixed.ok(0).latent, high.ok(0).latent);
    assert_ne!(mixed.ok(0).latent, low.ok(0).latent);
    assert_eq!(switch_notes(&mixed).len(), 1);
}

/// A rank-2 LoRA for the tiny Wan (width 32, FFN 64) in the three spellings trainers use:
/// kohya/musubi flattened (`lora_unet_blocks_0_self_attn_q`), diffusers/peft
/// (`transformer.blocks.1.attn1.to_q.lora_A`), ComfyUI/original dotted with `lora_down`/`up`
/// and `alpha` (`diffusion_model.blocks.0.ffn.0`), as step-distillation LoRAs ship.
fn write_lora(path: &Path, seed: u32) {
    use safetensors::Dtype as S;
    let rank = 2usize;
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let val = |i: usize, k: u32| 0.05 * (((i as u32 * 7 + k * 13 + seed * 31) % 11) as f32 - 5.0);
    for (module, down, up, inner, outer) in [
        (
            "lora_unet_blocks_0_self_attn_q",
            "lora_down",
            "lora_up",
            32,
            32,
        ),
        (
            "transformer.blocks.1.attn1.to_q",
            "lora_A",
            "lora_B",
            32,
            32,
        ),
        (
            "diffusion_model.blocks.0.ffn.0",
            "lora_down",
            "lora_up",
            32,
            64,
        ),
        (
            "diffusion_model.blocks.1.cross_attn.o",
            "lora_down",
            "lora_up",
            32,
            32,
        ),
    ] {
        owned.push((
            format!("{module}.{down}.weight"),
            vec![rank, inner],
            (0..rank * inner).map(|i| val(i, 1)).collect(),
        ));
        owned.push((
            format!("{module}.{up}.weight"),
            vec![outer, rank],
            (0..rank * outer).map(|i| val(i, 2)).collect(),
        ));
        if down == "lora_down" {
            owned.push((format!("{module}.alpha"), vec![], vec![1.0]));
        }
    }
    let bytes: Vec<Vec<u8>> = owned
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(S::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn each_expert_gets_its_own_loras() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let (la, lb) = (
        dir.path().join("high.safetensors"),
        dir.path().join("low.safetensors"),
    );
    write_lora(&la, 1);
    write_lora(&lb, 2);
    let lora = |p: &Path| format!("loras = [{{ file = \"{}\", strength = 0.9 }}]", p.display());
    let jobs = "[[jobs]]\nname = \"fox\"\nprompt = \"a red fox\"\nseed = 3\n";
    let go = |pipeline: &str, hi: &str, lo: &str| {
        let m = manifest_with(&out, pipeline, jobs, hi, lo);
        run_with(&m, options(&cache), &[&[0]], swap)
    };
    let plain = go(TWO, "", "");
    let high_lora = go(TWO, &lora(&la), "");
    let low_lora = go(TWO, "", &lora(&lb));
    let both = go(TWO, &lora(&la), &lora(&lb));
    let bits = |r: &Run| r.ok(0).latent.clone();
    // Each LoRA changes its expert's steps only, and the two compose.
    for (a, b, what) in [
        (&plain, &high_lora, "high-noise LoRA"),
        (&plain, &low_lora, "low-noise LoRA"),
        (&high_lora, &both, "adding the low-noise LoRA"),
        (&low_lora, &both, "adding the high-noise LoRA"),
    ] {
        assert_ne!(bits(a), bits(b), "{what} changes the result");
    }
    // A LoRA on an expert that never runs changes nothing: boundary 0.01 keeps the high-noise
    // expert for every step, so its LoRA is exactly the single-model run with that LoRA.
    let all_high = format!("{TWO}\nboundary = 0.01");
    let single = {
        let m = manifest_with(&out, "diffusion = \"wan_high\"", jobs, &lora(&la), "");
        run_with(&m, options(&cache), &[&[0]], |_| {})
    };
    assert_same(
        go(&all_high, &lora(&la), &lora(&lb)).ok(0),
        single.ok(0),
        "low LoRA unused",
    );
    // Every module of each LoRA file was matched (strict loading would have failed the run).
    let notes = both.notes().join("\n");
    assert!(!notes.contains("unmatched"), "{notes}");
}

#[test]
fn the_low_noise_expert_has_its_own_guidance_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let go = |pipeline: &str, extra: &str| {
        let jobs = format!("[[jobs]]\nname = \"fox\"\nprompt = \"a red fox\"\nseed = 3\n{extra}\n");
        run_with(
            &manifest(&out, pipeline, &jobs),
            options(&cache),
            &[&[0]],
            |_| {},
        )
    };
    let plain = go(TWO, "cfg = 4.0");
    let same = go(TWO, "cfg = 4.0\ncfg_low_noise = 4.0");
    let three = go(TWO, "cfg = 4.0\ncfg_low_noise = 3.0");
    assert_same(plain.ok(0), same.ok(0), "cfg_low_noise = cfg");
    assert_ne!(plain.ok(0).latent, three.ok(0).latent);
    let r = &three.ok(0).record;
    assert_eq!((r.cfg_scale, r.cfg_scale_low_noise), (4.0, Some(3.0)));
    assert_eq!(r.expert_boundary, Some(0.875));
    // With every step on the high-noise expert, the low-noise scale is never used.
    let all_high = format!("{TWO}\nboundary = 0.01");
    assert_same(
        go(&all_high, "cfg = 4.0").ok(0),
        go(&all_high, "cfg = 4.0\ncfg_low_noise = 3.0").ok(0),
        "unused cfg_low_noise",
    );
    // cfg = 1 on the high-noise steps still evaluates the negative prompt for the low ones.
    let mixed = go(TWO, "cfg = 1.0\ncfg_low_noise = 3.0");
    assert_eq!(
        mixed.ok(0).record.negative_prompt.as_deref(),
        Some("blurry")
    );
}
