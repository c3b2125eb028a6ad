//! Issue #5, "bit-identical across placements": the tiny FLUX pipeline (manifests/tiny/, made by
//! `mgpu make-tiny`) run through the executor's [`Generator`] with its weights
//! (a) all resident, (b) half of the transformer's blocks streamed from host memory, (c) every
//! block of every model streamed from `disk`, (d) with a LoRA (resident, host, disk: the
//! patched units homed on disk go through a spill file), (e) in batches of 1 and 3 — every
//! image's latent and RGB pixels are compared bit for bit with the all-resident batch-1 run.
//! Failures, events, GGUF bases and batch sizing: `exec_failures.rs`.
//!
//! [`Generator`]: mgpu::exec::pipeline::Generator

mod exec_common;

use exec_common::*;

use mgpu::exec::pipeline::UnitHome;
use mgpu::exec::Event;

#[test]
fn placements_batches_and_loras_give_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let m = load(&manifest_text(&out, "", JOBS));
    let n = tasks(&m).len();
    assert_eq!(n, 4);
    let singles: Vec<&[usize]> = vec![&[0], &[1], &[2], &[3]];

    // (a) all resident, one task per batch: the reference.
    let reference = run(&m, options(&cache), &singles);
    let r0 = reference.ok(0);
    assert_eq!(r0.latent_shape, vec![1, 16, 6, 8]);
    assert_eq!(r0.rgb().dimensions(), (64, 48));
    // Different seeds and prompts give different images (the comparison below can fail).
    assert_ne!(r0.latent, reference.ok(1).latent);
    assert_ne!(r0.rgb().as_raw(), reference.ok(3).rgb().as_raw());
    let resident_cpu = reference
        .measured("flux")
        .iter()
        .find(|(d, _)| d == "cpu")
        .map(|x| x.1)
        .unwrap();
    assert!(resident_cpu > 0);
    assert!(reference.fetched().iter().all(|&f| f == 0));

    // (e) the same, in a batch of 3 (and a batch of 1), and mixing prompts across batches.
    let batched = run(&m, options(&cache), &[&[0, 1, 2], &[3]]);
    assert_all_same(&reference, &batched, n, "resident, batches of 3 and 1");
    let mixed = run(&m, options(&cache), &[&[3, 0], &[2, 1]]);
    assert_all_same(&reference, &mixed, n, "resident, mixed batches of 2");

    // (b) half of the blocks streamed from host memory, batch of 3.
    let half = options(&cache)
        .with_home("flux", "double_blocks.1", UnitHome::Host)
        .with_home("flux", "single_blocks.1", UnitHome::Host);
    let host = run(&m, half, &[&[0, 1, 2], &[3]]);
    assert_all_same(&reference, &host, n, "half the blocks from host memory");
    let held = host.measured("flux");
    assert!(held.iter().any(|(d, b)| d == "cpu" && *b > 0), "{held:?}");
    // Two blocks fetched per pass, one pass per step and batch (2 steps × 2 batches).
    assert_eq!(host.fetched(), vec![2; 4]);

    // (c) every block of every model streamed from disk (the memory map), batches of 1 and 3.
    let disk = run(
        &m,
        everything_on(options(&cache), UnitHome::Disk),
        &[&[2], &[0, 1, 3]],
    );
    assert_all_same(&reference, &disk, n, "all blocks from disk");
    assert_eq!(disk.fetched(), vec![4; 4]);
    for model in ["flux", "t5", "clip", "vae"] {
        let held = disk.measured(model);
        assert!(
            held.iter().any(|(d, b)| d == "disk" && *b > 0),
            "{model}: {held:?}"
        );
    }
    // Unpatched tensors stored as used stay in the file: nothing to spill.
    assert!(
        !disk.notes().iter().any(|n| n.contains("spill file")),
        "{:?}",
        disk.notes()
    );

    // (d) with the tiny LoRA: every placement gives the same bytes, and they differ from the
    // run without it.
    let lora = load(&manifest_text(
        &out,
        r#"loras = [{ file = "tiny/lora-tiny.safetensors", strength = 0.8 }]"#,
        JOBS,
    ));
    let lora_resident = run(&lora, options(&cache), &singles);
    assert_ne!(
        lora_resident.ok(0).latent,
        r0.latent,
        "the LoRA changes the output"
    );
    assert_ne!(lora_resident.ok(0).rgb().as_raw(), r0.rgb().as_raw());
    let lora_disk = run(
        &lora,
        everything_on(options(&cache), UnitHome::Disk),
        &[&[0, 1, 2], &[3]],
    );
    assert_all_same(&lora_resident, &lora_disk, n, "LoRA, all blocks from disk");
    // Patched blocks homed on disk went through a spill file, which left nothing behind.
    assert!(
        lora_disk
            .notes()
            .iter()
            .any(|n| n.contains("model `flux`") && n.contains("spill file")),
        "{:?}",
        lora_disk.notes()
    );
    assert!(std::fs::read_dir(&cache)
        .map(|d| d
            .filter_map(Result::ok)
            .all(|e| e.file_name() == "hashes.json"))
        .unwrap_or(true));
    let lora_host = run(
        &lora,
        options(&cache)
            .with_home("flux", "double_blocks.0", UnitHome::Host)
            .with_home("flux", "single_blocks.0", UnitHome::Disk),
        &[&[1, 3], &[0, 2]],
    );
    assert_all_same(&lora_resident, &lora_host, n, "LoRA, host and disk homes");
}

#[test]
fn the_plan_streams_from_disk_with_the_demo_allocation() {
    // The allocation the demo manifest uses: half the blocks stay, half stream from the
    // memory-mapped file, as planned (no overrides). Same bytes as all resident.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let jobs = r#"
[[jobs]]
name = "fox"
prompt = "a red fox in snow"
seed = 5
count = 2
"#;
    let resident = run(
        &load(&manifest_text(&out, "", jobs)),
        options(&cache),
        &[&[0], &[1]],
    );
    let planned = run(
        &load(&manifest_text(
            &out,
            r#"allocation = "cpu,50%;disk,50%""#,
            jobs,
        )),
        options(&cache),
        &[&[0, 1]],
    );
    assert_all_same(&resident, &planned, 2, "planned cpu,50%;disk,50%");
    let held = planned.measured("flux");
    assert!(held.iter().any(|(d, b)| d == "disk" && *b > 0), "{held:?}");
    assert!(held.iter().any(|(d, b)| d == "cpu" && *b > 0), "{held:?}");
    // Steps report their engine passes, with bytes fetched from disk.
    let steps: Vec<_> = planned
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Step {
                step,
                steps,
                passes,
            } => Some((*step, *steps, passes.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
        vec![(1, 2), (2, 2)]
    );
    for (_, _, passes) in &steps {
        assert_eq!(passes.len(), 1);
        assert!(passes[0].fetched_units > 0);
        assert!(passes[0].link_bytes.iter().sum::<u64>() > 0);
    }
}
