//! The executor on the tiny FLUX pipeline, beyond placements (`exec_placements.rs`): a task
//! that fails in a batch (an init image of the wrong size, invalid numbers) fails alone and
//! leaves its neighbours' bytes unchanged; the events and records say what happened; load
//! failures are errors, not panics; a GGUF base is dequantised at load and placement
//! invariant; the batch size follows the plan's free memory and the job's `batch`.

mod exec_common;

use exec_common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mgpu::exec::pipeline::{generator, HashMode, PipelineOptions, UnitHome};
use mgpu::exec::Event;
use mgpu::manifest::Manifest;
use mgpu::{hardware, plan};

/// A 64×48 (or other size) RGB PNG with a gradient.
fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    img.save(path).unwrap();
}

#[test]
fn a_failing_task_fails_alone_and_leaves_its_neighbours_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let good: PathBuf = dir.path().join("init.png");
    let bad: PathBuf = dir.path().join("small.png");
    write_png(&good, 64, 48);
    write_png(&bad, 32, 32);
    let jobs = format!(
        r#"
[[jobs]]
name = "i2i"
prompt = "a red fox in snow"
seed = 11
count = 2
init_image = "{good}"
denoise = 0.6

[[jobs]]
name = "bad"
prompt = "a red fox in snow"
seed = 12
init_image = "{bad}"
denoise = 0.6
"#,
        good = good.display(),
        bad = bad.display()
    );
    let m = load(&manifest_text(&out, "", &jobs));
    // tasks: 0 = i2i seed 11, 1 = i2i seed 12, 2 = bad seed 12.
    let alone = run(&m, options(&cache), &[&[0], &[1]]);
    let together = run(
        &m,
        everything_on(options(&cache), UnitHome::Disk),
        &[&[0, 2, 1]],
    );
    assert_same(
        alone.ok(0),
        together.ok(0),
        "neighbour before the failing task",
    );
    assert_same(
        alone.ok(1),
        together.ok(1),
        "neighbour after the failing task",
    );
    let e = match &together.results[2] {
        Some(Err(e)) => e.to_string(),
        other => panic!(
            "the wrong-size init image should fail its task: {other:?}",
            other = other.as_ref().map(|r| r.as_ref().map(|_| ()))
        ),
    };
    assert!(e.contains("small.png") && e.contains("32"), "{e}");
    // img2img really used the init image: the same seed with another image gives other bytes.
    let other = dir.path().join("other.png");
    image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([255 - (x * 4) as u8, (y * 3) as u8, 9])
    })
    .save(&other)
    .unwrap();
    let swapped = run(
        &load(&manifest_text(
            &out,
            "",
            &jobs.replace(&good.display().to_string(), &other.display().to_string()),
        )),
        options(&cache),
        &[&[0]],
    );
    assert_ne!(swapped.ok(0).latent, alone.ok(0).latent);
    assert_eq!(
        alone
            .ok(0)
            .record
            .init_image
            .as_deref()
            .map(|p| p.ends_with("init.png")),
        Some(true)
    );
}

#[test]
fn records_events_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let long_prompt = "fox ".repeat(120);
    let jobs = format!(
        r#"
[[jobs]]
name = "long"
prompt = "{long_prompt}"
seed = 3
guidance = 4.5
"#
    );
    let m = load(&manifest_text(
        &out,
        r#"loras = [{ file = "tiny/lora-tiny.safetensors", strength = 0.5 }]"#,
        &jobs,
    ));
    let o = PipelineOptions {
        cache_dir: Some(cache.clone()),
        hashes: HashMode::Cached,
        ..Default::default()
    };
    let r = run(&m, o, &[&[0]]);
    let rec = &r.ok(0).record;
    assert_eq!(rec.job, "long");
    assert_eq!(rec.seed, 3);
    assert_eq!(rec.guidance, Some(4.5));
    assert_eq!((rec.width, rec.height, rec.steps), (64, 48, 2));
    assert_eq!(
        rec.models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["flux", "vae", "clip", "t5"]
    );
    assert_eq!(rec.models[0].file, "tiny/flux-tiny.safetensors");
    let sha = mgpu::output::FileHashes::compute(&m.models["flux"].file, false).unwrap();
    assert_eq!(rec.models[0].sha256.as_deref(), Some(sha.sha256.as_str()));
    assert_eq!(rec.loras.len(), 1);
    assert_eq!(rec.loras[0].name, "lora-tiny");
    assert_eq!(rec.loras[0].strength, 0.5);
    assert!(rec.loras[0].autov3.is_some());
    // The long prompt was truncated by CLIP (77 tokens) and said so.
    assert!(
        r.notes()
            .iter()
            .any(|n| n.contains("CLIP tokens") && n.contains("keeps 77")),
        "{:?}",
        r.notes()
    );
    // Text encoders are released after encoding, unless asked to keep them.
    assert!(r.notes().iter().any(|n| n.contains("`t5` released")));
    let kept = run(
        &m,
        PipelineOptions {
            keep_text_encoders: true,
            ..options(&cache)
        },
        &[&[0]],
    );
    assert!(
        !kept.notes().iter().any(|n| n.contains("text encoder")),
        "{:?}",
        kept.notes()
    );
    assert_same(r.ok(0), kept.ok(0), "kept text encoders");
    // Stages: loading, patching, distributing for every model.
    for model in ["flux", "vae", "clip", "t5"] {
        let stages: Vec<&str> = r
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Stage { model: m, stage } if m == model => Some(stage.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            stages.starts_with(&["loading", "patching", "distributing"]),
            "{model}: {stages:?}"
        );
    }
}

#[test]
fn load_failures_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let m = load(&manifest_text(&out, "", JOBS));
    let hw = hardware::file::parse(Path::new("hw.toml"), HW).unwrap();
    let inv = plan::manifest::read_inventories(&m).unwrap();
    let p = plan::plan(&plan::manifest::request(&m, &inv), &hw).unwrap();
    let all = tasks(&m);

    // A plan for other models.
    let mut other = p.clone();
    other.models.retain(|x| x.name != "t5");
    let mut g = generator(
        m.clone(),
        Arc::new(other),
        Arc::new(hw.clone()),
        options(dir.path()),
    )
    .unwrap();
    let e = g.prepare(&all, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("no entry for model `t5`"), "{e}");

    // A strict LoRA with modules the model does not have.
    let alien = dir.path().join("alien.safetensors");
    {
        use safetensors::tensor::{serialize_to_file, TensorView};
        let down = vec![0u8; 4 * 4 * 8];
        let up = vec![0u8; 4 * 8 * 4];
        serialize_to_file(
            vec![
                (
                    "lora_unet_no_such_layer.lora_down.weight".to_string(),
                    TensorView::new(safetensors::Dtype::F32, vec![4, 8], &down).unwrap(),
                ),
                (
                    "lora_unet_no_such_layer.lora_up.weight".to_string(),
                    TensorView::new(safetensors::Dtype::F32, vec![8, 4], &up).unwrap(),
                ),
            ],
            None,
            &alien,
        )
        .unwrap();
    }
    let lm = load(&manifest_text(
        &out,
        &format!(r#"loras = [{{ file = "{}" }}]"#, alien.display()),
        JOBS,
    ));
    let inv = plan::manifest::read_inventories(&lm).unwrap();
    let lp = plan::plan(&plan::manifest::request(&lm, &inv), &hw).unwrap();
    let mut g = generator(
        lm.clone(),
        Arc::new(lp.clone()),
        Arc::new(hw.clone()),
        options(dir.path()),
    )
    .unwrap();
    let e = g.prepare(&tasks(&lm), &mut |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("model `flux`") && e.contains("no_such_layer"),
        "{e}"
    );
    // Lenient: a note, and the run goes on.
    let lenient = load(&manifest_text(
        &out,
        &format!(
            r#"loras = [{{ file = "{}", strict = false }}]"#,
            alien.display()
        ),
        JOBS,
    ));
    let mut g = generator(
        lenient.clone(),
        Arc::new(lp),
        Arc::new(hw.clone()),
        options(dir.path()),
    )
    .unwrap();
    let mut notes = Vec::new();
    g.prepare(&tasks(&lenient), &mut |e| {
        if let Event::Note { message } = e {
            notes.push(message)
        }
    })
    .unwrap();
    assert!(
        notes.iter().any(|n| n.contains("match nothing")),
        "{notes:?}"
    );

    // A CUDA compute device in a CPU build is refused with the reason.
    if !cfg!(feature = "cuda") {
        let mut cuda = p.clone();
        for mp in &mut cuda.models {
            mp.compute = mgpu::device::DeviceName::Cuda(0);
        }
        let cm = load(
            &manifest_text(&out, "", JOBS).replace("compute = \"cpu\"", "compute = \"cuda:0\""),
        );
        let hw0 = hardware::file::parse(
            Path::new("hw.toml"),
            "[[devices]]\nname = \"cpu\"\nmemory = \"16GiB\"\n[[devices]]\nname = \"cuda:0\"\nmemory = \"24GiB\"\n",
        )
        .unwrap();
        let mut g = generator(
            cm.clone(),
            Arc::new(cuda),
            Arc::new(hw0),
            options(dir.path()),
        )
        .unwrap();
        let e = g.prepare(&tasks(&cm), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("built without CUDA"), "{e}");
    }
}

/// Writes `tensors` (name, PyTorch shape, f32 values) as a GGUF v3 file with mgpu's writer:
/// matrices whose rows are whole blocks of 32 in the GGML type `types` gives for their index
/// among those (quantised by llama.cpp's reference quantisers), F32 for the rest.
fn write_gguf(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    types: impl Fn(usize) -> mgpu::weights::DType,
) {
    use mgpu::weights::{gguf::GgufWriter, DType};
    let mut w = GgufWriter::new(path, "flux");
    let mut k = 0;
    for (name, shape, vals) in tensors {
        let quantised = shape.len() == 2 && shape[1] % 32 == 0;
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let ty = if quantised {
            k += 1;
            types(k - 1)
        } else {
            DType::F32
        };
        w.add_f32(name, &shape, ty, vals).unwrap();
    }
    w.finish().unwrap();
}

/// [`write_gguf`] with every matrix in Q8_0.
fn write_gguf_q8(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    write_gguf(path, tensors, |_| mgpu::weights::DType::Q8_0)
}

/// The tiny FLUX's tensors as (name, PyTorch shape, f32 values).
fn tiny_flux_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let src = mgpu::weights::WeightFile::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/tiny/flux-tiny.safetensors"),
    )
    .unwrap();
    src.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.iter().map(|&d| d as usize).collect(),
                src.to_f32(&t.name).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_gguf_base_is_dequantised_at_load_and_placement_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let tensors = tiny_flux_tensors();
    let gguf = dir.path().join("flux-tiny-Q8_0.gguf");
    write_gguf_q8(&gguf, &tensors);
    let jobs = TWO_FOXES;
    let flux_q8 = |extra: &str| {
        manifest_text(&out, extra, jobs)
            .replace("tiny/flux-tiny.safetensors", &gguf.display().to_string())
    };
    let resident = run(&load(&flux_q8("")), options(&cache), &[&[0], &[1]]);
    let disk = run(
        &load(&flux_q8("")),
        everything_on(options(&cache), UnitHome::Disk),
        &[&[0, 1]],
    );
    assert_all_same(&resident, &disk, 2, "GGUF, all blocks from disk");
    // Dequantised weights are not the file's bytes: disk homes went through a spill file.
    assert!(
        disk.notes()
            .iter()
            .any(|n| n.contains("model `flux`") && n.contains("spill file")),
        "{:?}",
        disk.notes()
    );
    // Q8_0 is not bf16: the image differs from the safetensors run (but is an image).
    let bf16 = run(
        &load(&manifest_text(&out, "", jobs)),
        options(&cache),
        &[&[0]],
    );
    assert_ne!(bf16.ok(0).latent, resident.ok(0).latent);
    // With a LoRA (baked into the dequantised weights; `on_dequant` is the same numbers and
    // says so): placements agree, and the LoRA changes the output.
    let lora = r#"loras = [{ file = "tiny/lora-tiny.safetensors" }]
lora_mode = "on_dequant""#;
    let with_lora = run(&load(&flux_q8(lora)), options(&cache), &[&[0, 1]]);
    let with_lora_host = run(
        &load(&flux_q8(lora)),
        everything_on(options(&cache), UnitHome::Host),
        &[&[1], &[0]],
    );
    assert_all_same(&with_lora, &with_lora_host, 2, "GGUF + LoRA, host homes");
    assert_ne!(with_lora.ok(0).latent, resident.ok(0).latent);
    assert!(
        with_lora.notes().iter().any(|n| n.contains("on_dequant")),
        "{:?}",
        with_lora.notes()
    );
    // Computed in bf16, the Q8_0 blocks stay quantised in their homes and travel that way
    // (dequantised where they are used): placements still agree, and a pass moves fewer
    // bytes than the same model stored in bf16.
    let bf16_q8 = flux_q8("dtype = \"bf16\"");
    let q_res = run(&load(&bf16_q8), options(&cache), &[&[0], &[1]]);
    let q_host = run(
        &load(&bf16_q8),
        everything_on(options(&cache), UnitHome::Host),
        &[&[0, 1]],
    );
    let q_disk = run(
        &load(&bf16_q8),
        everything_on(options(&cache), UnitHome::Disk),
        &[&[1], &[0]],
    );
    assert_all_same(&q_res, &q_host, 2, "GGUF in bf16, host homes");
    assert_all_same(&q_res, &q_disk, 2, "GGUF in bf16, disk homes");
    let plain_host = run(
        &load(&manifest_text(&out, "dtype = \"bf16\"", jobs)),
        everything_on(options(&cache), UnitHome::Host),
        &[&[0]],
    );
    let (q, plain) = (q_host.first_pass_bytes(), plain_host.first_pass_bytes());
    assert!(
        q > 0 && q < plain,
        "Q8_0 pass {q} bytes, bf16 pass {plain} bytes"
    );
}

/// `lora_mode = "on_dequant"` computed in bf16: a LoRA-patched GGUF keeps its blocks in every
/// home and adds the LoRA terms each time they are dequantised, with `bake`'s f32 operations in
/// `bake`'s order: the outputs are `bake`'s bit for bit, resident, from host RAM and from disk
/// (read from the file in place: no spill file, unlike `bake`'s dequantised weights), and a
/// pass moves the blocks instead of bf16 (decision 39).
#[test]
fn on_dequant_keeps_patched_blocks_and_gives_the_bake_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let gguf = dir.path().join("flux-tiny-Q8_0.gguf");
    write_gguf_q8(&gguf, &tiny_flux_tensors());
    let text = |mode: &str| {
        manifest_text(
            &out,
            &format!(
                "dtype = \"bf16\"\nloras = [{{ file = \"tiny/lora-tiny.safetensors\" }}]\nlora_mode = \"{mode}\""
            ),
            TWO_FOXES,
        )
        .replace("tiny/flux-tiny.safetensors", &gguf.display().to_string())
    };
    let bake = run(&load(&text("bake")), options(&cache), &[&[0, 1]]);
    let bake_host = run(
        &load(&text("bake")),
        everything_on(options(&cache), UnitHome::Host),
        &[&[0, 1]],
    );
    let resident = run(&load(&text("on_dequant")), options(&cache), &[&[0], &[1]]);
    let host = run(
        &load(&text("on_dequant")),
        everything_on(options(&cache), UnitHome::Host),
        &[&[1], &[0]],
    );
    let disk = run(
        &load(&text("on_dequant")),
        everything_on(options(&cache), UnitHome::Disk),
        &[&[0, 1]],
    );
    assert_all_same(&bake, &resident, 2, "on_dequant resident vs bake");
    assert_all_same(&bake, &host, 2, "on_dequant from host RAM vs bake");
    assert_all_same(&bake, &disk, 2, "on_dequant from disk vs bake");
    let spill = |r: &Run| r.notes().iter().any(|n| n.contains("spill file"));
    assert!(!spill(&disk), "{:?}", disk.notes());
    assert!(
        !host.notes().iter().any(|n| n.contains("on_dequant")),
        "{:?}",
        host.notes()
    );
    let (q, baked) = (host.first_pass_bytes(), bake_host.first_pass_bytes());
    assert!(
        q > 0 && 5 * q < 3 * baked,
        "on_dequant pass {q} bytes, bake pass {baked} bytes"
    );
}

/// Every GGML block type computed in bf16 stays in its blocks and travels that way (issue 13;
/// before, only Q8_0 did and the others were widened to bf16 at load): a tiny FLUX whose
/// matrices cycle through Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 gives the same bytes resident, from
/// host RAM and from disk (the disk homes read the file's blocks in place: no spill file), and
/// a pass moves fewer bytes than the all-Q8_0 file. (The tiny model's rows, 32 to 160 values,
/// are too short for the 256-value K-quant blocks: those are checked against the CPU on the
/// GPU by `mgpu bench --check-fp8`, and travel in the bench's `@q4_k` placements.)
#[test]
fn every_ggml_type_travels_in_its_blocks() {
    use mgpu::weights::DType as W;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let tensors = tiny_flux_tensors();
    let mixed = dir.path().join("flux-tiny-mixed.gguf");
    let types = [W::Q4_0, W::Q4_1, W::Q5_0, W::Q5_1, W::Q8_0];
    write_gguf(&mixed, &tensors, |k| types[k % types.len()]);
    let q8 = dir.path().join("flux-tiny-Q8_0.gguf");
    write_gguf_q8(&q8, &tensors);
    let jobs = TWO_FOXES;
    let with = |file: &Path| {
        manifest_text(&out, "dtype = \"bf16\"", jobs)
            .replace("tiny/flux-tiny.safetensors", &file.display().to_string())
    };
    let resident = run(&load(&with(&mixed)), options(&cache), &[&[0], &[1]]);
    let host = run(
        &load(&with(&mixed)),
        everything_on(options(&cache), UnitHome::Host),
        &[&[0, 1]],
    );
    let disk = run(
        &load(&with(&mixed)),
        everything_on(options(&cache), UnitHome::Disk),
        &[&[1], &[0]],
    );
    assert_all_same(&resident, &host, 2, "mixed GGML types, host homes");
    assert_all_same(&resident, &disk, 2, "mixed GGML types, disk homes");
    assert!(
        !disk.notes().iter().any(|n| n.contains("spill file")),
        "the blocks are the file's bytes: {:?}",
        disk.notes()
    );
    let q8_host = run(
        &load(&with(&q8)),
        everything_on(options(&cache), UnitHome::Host),
        &[&[0]],
    );
    let (m, q) = (host.first_pass_bytes(), q8_host.first_pass_bytes());
    assert!(m > 0 && m < q, "mixed pass {m} bytes, Q8_0 pass {q} bytes");
    // Different quantisations, different pictures.
    assert_ne!(resident.ok(0).latent, q8_host.ok(0).latent);
}

#[test]
fn max_batch_follows_the_plans_free_memory_and_the_jobs_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let plan_for = |m: &Arc<Manifest>, hw: &str| {
        let hw = hardware::file::parse(Path::new("hw.toml"), hw).unwrap();
        let inv = plan::manifest::read_inventories(m).unwrap();
        let p = plan::plan(&plan::manifest::request(m, &inv), &hw).unwrap();
        (p, hw)
    };
    let m = load(&manifest_text(&out, "", JOBS));
    let task = tasks(&m).remove(0);
    // 16 GiB: the cap.
    let (p, hw) = plan_for(&m, HW);
    let g = generator(m.clone(), Arc::new(p), Arc::new(hw), options(dir.path())).unwrap();
    assert_eq!(g.max_batch(&task), mgpu::exec::pipeline::MAX_BATCH);
    // A host with ~100 MiB usable: the free memory over the planner's per-job bytes.
    let small = "[[devices]]\nname = \"cpu\"\nmemory = \"2148MiB\"\n";
    let (p, hw) = plan_for(&m, small);
    let mp = p.models.iter().find(|x| x.name == "flux").unwrap();
    let per_job = mp.working_set.latents / mp.workload.batch as u64;
    let free = p
        .devices
        .iter()
        .find(|d| d.name == mgpu::device::DeviceName::Cpu)
        .unwrap()
        .free
        .unwrap();
    let want = (1 + free / per_job) as usize;
    assert!(want > 1 && want < mgpu::exec::pipeline::MAX_BATCH, "{want}");
    let g = generator(m.clone(), Arc::new(p), Arc::new(hw), options(dir.path())).unwrap();
    assert_eq!(g.max_batch(&task), want);
    // The job's `batch` when smaller.
    let b2 = load(&manifest_text(
        &out,
        "",
        &JOBS.replace("count = 3", "count = 3\nbatch = 2"),
    ));
    let (p, hw) = plan_for(&b2, HW);
    let g = generator(b2.clone(), Arc::new(p), Arc::new(hw), options(dir.path())).unwrap();
    assert_eq!(g.max_batch(&tasks(&b2)[0]), 2);
}

#[test]
fn invalid_numbers_fail_the_task_not_the_run() {
    // A LoRA strength so large that activations overflow to ±∞ and NaN: every task fails with
    // the step where its latent went bad, as a task error, and the run goes on.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let m = load(&manifest_text(
        &out,
        r#"loras = [{ file = "tiny/lora-tiny.safetensors", strength = 1e30 }]"#,
        JOBS,
    ));
    let r = run(&m, options(dir.path()), &[&[0, 1, 2], &[3]]);
    for (i, res) in r.results.iter().enumerate() {
        match res {
            Some(Err(e)) => assert!(
                e.to_string().contains("NaN or infinite") && e.to_string().contains("step 1 of 2"),
                "task {i}: {e}"
            ),
            _ => panic!("task {i} should fail"),
        }
    }
}
