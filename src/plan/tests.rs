//! Planner tests: semantics of each allocation mode, errors and their fixes, and snapshots of
//! rendered plans for a FLUX.1-dev-shaped model (real shapes, `inventory::synthetic`).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::*;
use crate::alloc::{Entry, ExpertAllocation, Mode, Override, Value};
use crate::hardware::{file, Hardware};
use crate::inventory::synthetic;
use crate::units::{ByteSize, GIB};
use crate::weights::DType;

pub(crate) fn hw(name: &str) -> Hardware {
    file::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

fn flux_inv() -> Arc<Inventory> {
    static INV: OnceLock<Arc<Inventory>> = OnceLock::new();
    INV.get_or_init(|| Arc::new(synthetic::flux_dev(DType::BF16)))
        .clone()
}

fn model(alloc: Allocation) -> ModelRequest {
    ModelRequest {
        name: "flux".into(),
        family: Family::Flux,
        compute: DeviceName::Cuda(0),
        allocation: alloc,
        overrides: vec![],
        inventory: flux_inv(),
        device_bytes: None,
        patch_flops_per_value: 0.0,
        workload: Workload::image(1024, 1024),
        prefetch: None,
    }
}

fn encoder(name: &str, inv: Inventory, alloc: Allocation) -> ModelRequest {
    let family = inv.family.unwrap();
    let mut w = Workload::image(1024, 1024);
    w.steps = 1;
    ModelRequest {
        name: name.into(),
        family,
        inventory: Arc::new(inv),
        workload: w,
        ..model(alloc)
    }
}

fn gib(g: f64) -> ByteSize {
    ByteSize((g * GIB as f64) as u64)
}

/// `[("cuda:0", Some(12.0)), ("cpu", None)]` → bytes mode, `None` = wildcard.
fn bytes(entries: &[(&str, Option<f64>)]) -> Allocation {
    Allocation::Expert(ExpertAllocation {
        mode: Mode::Bytes,
        entries: entries
            .iter()
            .map(|(d, v)| Entry {
                device: d.parse().unwrap(),
                value: v.map(|g| Value::Bytes(gib(g))),
                wildcard: v.is_none(),
                span: Default::default(),
            })
            .collect(),
    })
}

fn expert(mode: Mode, entries: &[(&str, Value)]) -> Allocation {
    Allocation::Expert(ExpertAllocation {
        mode,
        entries: entries
            .iter()
            .map(|(d, v)| Entry {
                device: d.parse().unwrap(),
                value: Some(*v),
                wildcard: false,
                span: Default::default(),
            })
            .collect(),
    })
}

fn ov(pattern: &str, device: &str) -> Override {
    Override {
        pattern: regex::Regex::new(pattern).unwrap(),
        device: device.parse().unwrap(),
    }
}

fn one(m: ModelRequest, hw: &Hardware) -> Result<Plan, PlanErrors> {
    plan(
        &PlanRequest {
            models: vec![m],
            experts: vec![],
        },
        hw,
    )
}

fn on(p: &ModelPlan, d: &str) -> u64 {
    p.placement.get(&d.parse().unwrap()).copied().unwrap_or(0)
}

/// The subset of the allocation language the planner writes in fixes (`cuda:0,17.5gb;cpu,*`),
/// so tests can plan with a suggestion exactly as printed.
fn parse_fix(text: &str) -> Allocation {
    let entries = text
        .split(';')
        .map(|e| {
            let (d, v) = e.split_once(',').unwrap();
            let wildcard = v == "*";
            let value = (!wildcard).then(|| Value::Bytes(ByteSize::parse(v).unwrap()));
            Entry {
                device: d.parse().unwrap(),
                value,
                wildcard,
                span: Default::default(),
            }
        })
        .collect();
    Allocation::Expert(ExpertAllocation {
        mode: Mode::Bytes,
        entries,
    })
}

fn not_fit(e: &PlanError) -> &NotFit {
    match e {
        PlanError::DoesNotFit(nf) => nf,
        e => panic!("expected DoesNotFit, got {e}"),
    }
}

fn snap(name: &str, p: &Plan) {
    insta::assert_snapshot!(format!("{name}_text"), render_text(p));
    insta::assert_snapshot!(format!("{name}_json"), render_json(p));
}

// --- predictions against the anchors ---

#[test]
fn resident_step_matches_the_h100_anchor() {
    let p = one(model(Allocation::Auto), &hw("hw-h100-cpu.toml")).unwrap();
    let m = &p.models[0];
    assert!(m.blocks.iter().all(|b| b.home == DeviceName::Cuda(0)));
    assert_eq!(m.prefetch_slots, 0);
    assert!(
        // mgpu's measured 0.1495 s at 760 TFLOP/s, at the file's 791 TFLOP/s: 0.1436 s.
        (m.predicted.step_seconds - 0.1436).abs() < 0.001,
        "{}",
        m.predicted.step_seconds
    );
    assert_eq!(m.predicted.slowdown, 1.0);
    snap("auto_h100", &p);
}

#[test]
fn full_offload_over_pcie_is_link_bound_at_the_anchor_floor() {
    // anchors.md: 23.8 GB / 55.1 GB/s = 0.432 s for a 100%-offloaded batch-1 step.
    let p = one(model(bytes(&[("cpu", None)])), &hw("hw-h100-cpu.toml")).unwrap();
    let m = &p.models[0];
    assert_eq!(on(m, "cuda:0"), flux_inv().resident_bytes());
    assert!(
        (m.predicted.floor_seconds - 0.4297).abs() < 0.001,
        "{}",
        m.predicted.floor_seconds
    );
    // The ring reaches the floor (the prototype measured 1.01 × max(copy, compute)).
    assert!(
        m.predicted.step_seconds <= m.predicted.floor_seconds * 1.01,
        "{:?}",
        m.predicted
    );
    // Batch 4: copies once per step, compute four times.
    let mut b4 = model(bytes(&[("cpu", None)]));
    b4.workload.batch = 4;
    let p4 = one(b4, &hw("hw-h100-cpu.toml")).unwrap();
    let s4 = &p4.models[0].predicted;
    assert!((s4.compute_seconds - 4.0 * m.predicted.compute_seconds).abs() < 1e-5);
    assert!(
        s4.slowdown < 1.05 && m.predicted.slowdown > 2.3,
        "{} {}",
        s4.slowdown,
        m.predicted.slowdown
    );
}

#[test]
fn interleaving_hides_copies_that_tail_first_does_not() {
    // 5 GiB streamed over 55.1 GB/s = 0.097 s < 0.144 s of compute: hideable.
    let h = hw("hw-h100-cpu.toml");
    let mut m = model(bytes(&[("cuda:0", Some(17.0)), ("cpu", None)]));
    m.prefetch = Some(2);
    let p = one(m.clone(), &h).unwrap();
    let ours = p.models[0].predicted.step_seconds;
    assert!(ours < 0.185, "{ours}");
    // DisTorch2's choice: the same number of bytes from the tail of the model.
    let ctx = place::ModelCtx::new(&m, &h);
    let streamed = on(&p.models[0], "cpu");
    let mut homes = vec![DeviceName::Cuda(0); ctx.inv.units.len()];
    let mut moved = 0;
    for i in (0..homes.len()).rev() {
        if moved >= streamed {
            break;
        }
        homes[i] = DeviceName::Cpu;
        moved += ctx.inv.units[i].bytes;
    }
    let tail = simulate::step_seconds(&place::sim_units(&ctx, &h, &homes), 2);
    assert!(tail > ours * 1.1, "tail-first {tail} vs interleaved {ours}");
}

// --- allocation modes ---

#[test]
fn bytes_mode_honours_quotas_and_written_order() {
    let h = hw("hw-h100-cpu.toml");
    let p = one(model(bytes(&[("cuda:0", Some(12.0)), ("cpu", None)])), &h).unwrap();
    let m = &p.models[0];
    assert!(
        on(m, "cuda:0") <= gib(12.0).0 && on(m, "cuda:0") > gib(11.0).0,
        "{:?}",
        m.placement
    );
    assert_eq!(on(m, "cuda:0") + on(m, "cpu"), flux_inv().total_bytes());
    // Streamed blocks are spread: some in the first and some in the last quarter of the step.
    let cpu: Vec<usize> = (0..m.blocks.len())
        .filter(|&i| m.blocks[i].home == DeviceName::Cpu)
        .collect();
    assert!(
        cpu.first().unwrap() < &15 && cpu.last().unwrap() > &45,
        "{cpu:?}"
    );
    snap("bytes_h100", &p);
    // Written first, served first: cpu gets its 10 GiB (at most: cuda:0 is the wildcard).
    let p = one(model(bytes(&[("cpu", Some(10.0)), ("cuda:0", None)])), &h).unwrap();
    let m = &p.models[0];
    assert!(
        on(m, "cpu") <= gib(10.0).0 && on(m, "cpu") > gib(9.0).0,
        "{:?}",
        m.placement
    );
}

#[test]
fn ratio_and_fraction_modes() {
    let h = hw("hw-h100-cpu.toml");
    let total = flux_inv().total_bytes();
    let p = one(
        model(expert(
            Mode::Ratio,
            &[
                ("cuda:0", Value::Percent(25.0)),
                ("cpu", Value::Percent(75.0)),
            ],
        )),
        &h,
    )
    .unwrap();
    assert!(
        on(&p.models[0], "cuda:0") <= total / 4,
        "{:?}",
        p.models[0].placement
    );
    assert!(on(&p.models[0], "cuda:0") > total / 5);
    snap("ratio_h100", &p);
    // 0.2 of cuda:0's 80 GiB total = 16 GiB; cpu's 0.5 × 128 GiB covers the rest.
    let p = one(
        model(expert(
            Mode::Fraction,
            &[
                ("cuda:0", Value::Fraction(0.2)),
                ("cpu", Value::Fraction(0.5)),
            ],
        )),
        &h,
    )
    .unwrap();
    let c = on(&p.models[0], "cuda:0");
    assert!(c <= 16 * GIB && c > 15 * GIB, "{c}");
    snap("fraction_h100", &p);
}

#[test]
fn virtual_vram_moves_at_least_that_much() {
    let h = hw("hw-h100-cpu.toml");
    let p = one(
        model(Allocation::VirtualVram {
            bytes: ByteSize::gib(8),
            donor: DeviceName::Cpu,
        }),
        &h,
    )
    .unwrap();
    let cpu = on(&p.models[0], "cpu");
    assert!((8 * GIB..9 * GIB).contains(&cpu), "{cpu}");
    snap("virtual_vram_h100", &p);
}

#[test]
fn nvlink_donor_hides_all_copies() {
    let h = hw("hw-h100x2.toml");
    let p = one(model(bytes(&[("cuda:0", Some(4.0)), ("cuda:1", None)])), &h).unwrap();
    let m = &p.models[0];
    assert!(on(m, "cuda:1") > 18 * GIB);
    assert_eq!(m.predicted.per_link.len(), 1);
    assert_eq!(m.predicted.per_link[0].gbps, 396.0);
    assert!(m.predicted.slowdown < 1.01, "{:?}", m.predicted);
    snap("nvlink_h100x2", &p);
}

#[test]
fn auto_prefers_the_nvlink_peer_and_keeps_what_fits() {
    let mut h = hw("hw-h100x2.toml");
    h.devices[0].free = Some(ByteSize::gib(16));
    let p = one(model(Allocation::Auto), &h).unwrap();
    let m = &p.models[0];
    assert_eq!(on(m, "cpu"), 0, "{:?}", m.placement);
    assert!(on(m, "cuda:1") > 9 * GIB);
    let d0 = p
        .devices
        .iter()
        .find(|d| d.name == DeviceName::Cuda(0))
        .unwrap();
    assert!(
        d0.free.unwrap() < GIB,
        "auto should fill the compute device: {d0:?}"
    );
    assert!(m.predicted.slowdown < 1.01);
    snap("auto_h100x2_16gib_free", &p);
}

#[test]
fn auto_on_a_24gb_card_streams_the_smallest_blocks() {
    let p = one(model(Allocation::Auto), &hw("hw-4090-cpu.toml")).unwrap();
    let m = &p.models[0];
    assert!(on(m, "cpu") > 0);
    assert!(
        m.blocks
            .iter()
            .filter(|b| b.home == DeviceName::Cpu)
            .all(|b| b.name.starts_with("single_blocks.")),
        "{}",
        render_text(&p)
    );
    snap("auto_4090", &p);
}

#[test]
fn overrides_first_then_quotas() {
    let h = hw("hw-h100-cpu.toml");
    let mut m = model(bytes(&[("cuda:0", Some(20.0)), ("cpu", None)]));
    m.overrides = vec![
        ov(r"single_blocks\.(3[0-7])", "cpu"),
        ov(r"double_blocks\.1[0-8]\.img_attn\.qkv\.weight", "disk"),
    ];
    let p = one(m, &h).unwrap();
    let mp = &p.models[0];
    for b in &mp.blocks {
        if let Some(i) = b
            .name
            .strip_prefix("single_blocks.")
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| *i >= 30)
        {
            assert_eq!(
                (b.home, b.reason),
                (DeviceName::Cpu, Reason::Override(0)),
                "single_blocks.{i}"
            );
        }
        if let Some(i) = b
            .name
            .strip_prefix("double_blocks.")
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| *i >= 10)
        {
            assert_eq!(
                (b.home, b.reason),
                (DeviceName::Disk, Reason::Override(1)),
                "double_blocks.{i}"
            );
        }
    }
    // 8 single blocks on cpu already exceed nothing; cuda:0 keeps at most its 20 GiB.
    assert!(on(mp, "cuda:0") <= 20 * GIB);
    snap("overrides_h100", &p);
}

#[test]
fn disk_donor_goes_through_the_host_link() {
    let p = one(
        model(bytes(&[("cuda:0", Some(18.0)), ("disk", None)])),
        &hw("hw-h100-cpu.toml"),
    )
    .unwrap();
    let l = &p.models[0].predicted.per_link[0];
    assert_eq!((l.from, l.gbps, l.assumed), (DeviceName::Disk, 2.0, true));
    assert!(p.models[0]
        .notes
        .iter()
        .any(|n| n.contains("memory-mapped file")));
}

#[test]
fn dequantised_weights_take_more_room_on_the_compute_device() {
    let mut m = model(Allocation::Auto);
    m.device_bytes = Some(m.inventory.units.iter().map(|u| 2 * u.bytes).collect());
    let p = one(m, &hw("hw-h100-cpu.toml")).unwrap();
    let ws = &p.models[0].working_set;
    assert_eq!(ws.resident, 2 * flux_inv().total_bytes());
}

#[test]
fn models_sharing_a_device_add_weights_and_share_the_working_set() {
    let h = hw("hw-4090-cpu.toml");
    let models = vec![
        encoder("t5", synthetic::t5_xxl(DType::F16), Allocation::Auto),
        encoder("clip", synthetic::clip_l(DType::F16), Allocation::Auto),
        model(Allocation::Auto),
    ];
    let p = plan(
        &PlanRequest {
            models,
            experts: vec![],
        },
        &h,
    )
    .unwrap();
    let d0 = &p.devices[0];
    let weights: u64 = p.models.iter().map(|m| on(m, "cuda:0")).sum();
    assert_eq!(d0.weights, weights);
    let max_ws = p
        .models
        .iter()
        .map(|m| m.working_set.slots + m.working_set.activations + m.working_set.latents)
        .max()
        .unwrap();
    assert_eq!(d0.working_set, max_ws);
    assert!(d0.weights + d0.working_set <= d0.usable.unwrap());
    // The diffusion model is placed first and keeps most of its blocks.
    assert!(on(&p.models[2], "cuda:0") > on(&p.models[0], "cuda:0"));
    assert_eq!(
        p.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["t5", "clip", "flux"]
    );
    snap("pipeline_4090", &p);
}

#[test]
fn prefetch_is_chosen_or_taken_as_given() {
    let h = hw("hw-h100-cpu.toml");
    let mut m = model(bytes(&[("cuda:0", Some(12.0)), ("cpu", None)]));
    m.prefetch = Some(1);
    let one_slot = one(m.clone(), &h).unwrap();
    assert_eq!(one_slot.models[0].prefetch_slots, 1);
    m.prefetch = None;
    let chosen = one(m, &h).unwrap();
    assert!(chosen.models[0].prefetch_slots >= 2);
    assert!(chosen.models[0].predicted.step_seconds < one_slot.models[0].predicted.step_seconds);
}

#[test]
fn a_thousand_block_model_plans() {
    let inv = Arc::new(synthetic::wan(DType::BF16, 1536, 8960, 1000));
    let mut w = Workload::image(832, 480);
    w.frames = 81;
    w.evals_per_step = 2;
    let m = ModelRequest {
        name: "wan".into(),
        family: Family::Wan,
        inventory: inv,
        workload: w,
        ..model(Allocation::Auto)
    };
    let p = one(m, &hw("hw-h100x2.toml")).unwrap();
    assert_eq!(p.models[0].blocks.len(), 1001);
}

// --- errors ---

fn errors(r: Result<Plan, PlanErrors>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn unknown_devices_are_named_with_what_exists() {
    let mut m = model(bytes(&[
        ("cuda:0", Some(8.0)),
        ("cuda:3", Some(4.0)),
        ("cpu", None),
    ]));
    m.compute = DeviceName::Cuda(2);
    m.overrides = vec![ov("single_blocks.0", "cuda:5")];
    let r = one(m, &hw("hw-h100-cpu.toml"));
    let e = r.as_ref().unwrap_err();
    let at: Vec<Option<Location>> = e.0.iter().map(|x| x.location()).collect();
    assert_eq!(
        at,
        [
            Some(Location::Compute),
            Some(Location::Entry(1)),
            Some(Location::Override(0))
        ]
    );
    insta::assert_snapshot!("error_unknown_devices", errors(r));
    let m = model(Allocation::VirtualVram {
        bytes: ByteSize::gib(4),
        donor: DeviceName::Cuda(1),
    });
    insta::assert_snapshot!(
        "error_unknown_donor",
        errors(one(m, &hw("hw-h100-cpu.toml")))
    );
}

#[test]
fn quotas_without_wildcard_that_cannot_hold_the_model() {
    let h = hw("hw-h100-cpu.toml");
    let r = one(
        model(bytes(&[("cuda:0", Some(8.0)), ("cpu", Some(10.0))])),
        &h,
    );
    let e = errors(r);
    assert!(e.contains("e.g. allocation = \"cuda:0,8GiB;cpu,*\""), "{e}");
    insta::assert_snapshot!("error_quota_short_bytes", e);
    let r = one(
        model(expert(
            Mode::Fraction,
            &[
                ("cuda:0", Value::Fraction(0.1)),
                ("cpu", Value::Fraction(0.05)),
            ],
        )),
        &h,
    );
    insta::assert_snapshot!("error_quota_short_fraction", errors(r));
    let r = one(
        model(expert(
            Mode::Ratio,
            &[
                ("cuda:0", Value::Percent(0.0)),
                ("cpu", Value::Percent(0.0)),
            ],
        )),
        &h,
    );
    insta::assert_snapshot!("error_zero_shares", errors(r));
    let mut a = expert(
        Mode::Ratio,
        &[
            ("cuda:0", Value::Percent(80.0)),
            ("cpu", Value::Percent(30.0)),
        ],
    );
    if let Allocation::Expert(e) = &mut a {
        e.entries.push(Entry {
            device: DeviceName::Disk,
            value: None,
            wildcard: true,
            span: Default::default(),
        });
    }
    insta::assert_snapshot!("error_ratio_overflow", errors(one(model(a), &h)));
    let r = one(
        model(expert(
            Mode::Fraction,
            &[
                ("cuda:0", Value::Fraction(0.1)),
                ("disk", Value::Fraction(0.5)),
            ],
        )),
        &h,
    );
    insta::assert_snapshot!("error_fraction_of_disk", errors(r));
}

#[test]
fn overrides_that_change_nothing() {
    let mut m = model(bytes(&[("cuda:0", None)]));
    m.overrides = vec![
        ov(r"double_blocks\.1", "cpu"),
        ov(r"double_blocks\.1\..*", "cpu"),
        ov(r"img_in\.weight", "cpu"),
        ov(r"single_block\.0", "cpu"),
    ];
    let r = one(m, &hw("hw-h100-cpu.toml"));
    let e = r.as_ref().unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    insta::assert_snapshot!("error_overrides", errors(r));
}

#[test]
fn plans_that_do_not_fit_get_a_fix_that_fits() {
    let h = hw("hw-4090-cpu.toml");
    let m = model(bytes(&[("cuda:0", Some(22.0)), ("cpu", None)]));
    let r = one(m.clone(), &h);
    let e = r.as_ref().unwrap_err();
    let Fix::Allocation { text, key, .. } = &not_fit(&e.0[0]).fix else {
        panic!("{e}")
    };
    assert_eq!(*key, "allocation");
    one(model(parse_fix(text)), &h)
        .unwrap_or_else(|e| panic!("suggested {text} does not plan: {e}"));
    insta::assert_snapshot!("error_does_not_fit_bytes", errors(r));
    // The same with virtual VRAM: the fix is a larger virtual_vram.
    let r = one(
        model(Allocation::VirtualVram {
            bytes: ByteSize::gib(1),
            donor: DeviceName::Cpu,
        }),
        &h,
    );
    let e = r.as_ref().unwrap_err();
    let Fix::Allocation { text, key, .. } = &not_fit(&e.0[0]).fix else {
        panic!("{e}")
    };
    assert_eq!(*key, "virtual_vram");
    let v = ByteSize::parse(text).unwrap();
    one(
        model(Allocation::VirtualVram {
            bytes: v,
            donor: DeviceName::Cpu,
        }),
        &h,
    )
    .unwrap();
    insta::assert_snapshot!("error_does_not_fit_virtual_vram", errors(r));
}

#[test]
fn a_full_donor_is_refused_with_a_disk_fix() {
    let mut h = hw("hw-4090-cpu.toml");
    h.devices[1].memory = ByteSize::gib(16);
    let r = one(model(bytes(&[("cuda:0", Some(4.0)), ("cpu", None)])), &h);
    let e = r.as_ref().unwrap_err();
    let nf = not_fit(&e.0[0]);
    assert_eq!(nf.device, DeviceName::Cpu);
    let Fix::Allocation { text, .. } = &nf.fix else {
        panic!("{e}")
    };
    assert!(text.ends_with("disk,*"), "{text}");
    one(model(parse_fix(text)), &h)
        .unwrap_or_else(|e| panic!("suggested {text} does not plan: {e}"));
    insta::assert_snapshot!("error_donor_full", errors(r));
}

#[test]
fn a_working_set_too_large_for_the_device_says_so() {
    let mut m = model(Allocation::Auto);
    m.workload = Workload::image(2048, 2048);
    let mut h = hw("hw-4090-cpu.toml");
    h.devices[0].memory = ByteSize::gib(8);
    let r = one(m, &h);
    let e = r.as_ref().unwrap_err();
    assert!(matches!(not_fit(&e.0[0]).fix, Fix::Shrink { .. }), "{e}");
    insta::assert_snapshot!("error_working_set_too_large", errors(r));
}

#[test]
fn other_errors() {
    let h = hw("hw-h100-cpu.toml");
    let mut m = model(bytes(&[("cpu", None)]));
    m.prefetch = Some(0);
    insta::assert_snapshot!("error_prefetch_zero", errors(one(m, &h)));
    let mut m = model(bytes(&[("cpu", None)]));
    m.compute = DeviceName::Disk;
    insta::assert_snapshot!("error_disk_computes", errors(one(m, &h)));
    let mut bad = h.clone();
    bad.links[0].gbps = Some(-1.0);
    insta::assert_snapshot!("error_hardware", errors(one(model(Allocation::Auto), &bad)));
}

#[test]
fn fp8_units_travel_compact_and_slots_hold_both_forms() {
    let inv = Arc::new(synthetic::flux_dev(DType::F8_E4M3));
    let mut m = model(Allocation::Auto);
    m.inventory = inv.clone();
    m.device_bytes = Some(inv.units.iter().map(|u| 2 * u.bytes).collect());
    let p = one(m, &hw("hw-4090-cpu.toml")).unwrap();
    let mp = &p.models[0];
    let streamed: Vec<&BlockPlan> = mp.blocks.iter().filter(|b| b.home != mp.compute).collect();
    assert!(!streamed.is_empty(), "a 24 GB card streams FLUX.1-dev");
    // Units count their fp8 bytes (what homes hold and a fetch moves) …
    for b in &streamed {
        let u = inv.units.iter().find(|u| u.name == b.name).unwrap();
        assert_eq!(b.bytes, u.bytes, "{}", b.name);
    }
    // … and a slot holds the widened bf16 values (2×) beside the compact bytes (1×), for the
    // largest unit whose tensors are all fp8.
    let largest = streamed.iter().map(|b| b.bytes).max().unwrap();
    assert!(
        mp.slot_bytes <= 3 * largest && mp.slot_bytes > 2 * largest,
        "slot {} for a largest streamed unit of {largest}",
        mp.slot_bytes
    );
}

/// A GGUF mixing K-quants (a Q4_K_M FLUX.1-dev: Q5_K `qkv` in the double blocks, Q4_K
/// elsewhere, F16/F32 embeddings) is counted unit by unit on the compute device: the working
/// set is exactly the widened values of the blocks kept there, and a 24 GB card keeps more
/// blocks than when every unit was counted at the most compact unit's ratio (decision 38).
#[test]
fn mixed_k_quant_units_are_held_at_their_own_size() {
    let file =
        crate::inventory::gguf_layout::FileType::in_file_name("flux1-dev-Q4_K_M.gguf").unwrap();
    let inv = Arc::new(file.apply(&flux_inv()));
    let held: Vec<u64> = inv
        .units
        .iter()
        .map(|u| inv.tensors_of(u).map(|t| 2 * t.numel()).sum())
        .collect();
    let ratio = |i: usize| held[i] as f64 / inv.units[i].bytes as f64;
    let largest = (0..held.len()).map(ratio).fold(0.0, f64::max);
    let smallest = (0..held.len()).map(ratio).fold(f64::INFINITY, f64::min);
    assert!(largest > 1.15 * smallest, "{smallest} … {largest}");
    let plan = |device_bytes: Vec<u64>| {
        let mut m = model(Allocation::Auto);
        m.inventory = inv.clone();
        m.device_bytes = Some(device_bytes);
        one(m, &hw("hw-4090-cpu.toml")).unwrap().models.remove(0)
    };
    let exact = plan(held.clone());
    let kept = |p: &ModelPlan| p.blocks.iter().filter(|b| b.home == p.compute).count();
    let on_compute: u64 = (0..held.len())
        .filter(|&i| exact.blocks[i].home == exact.compute)
        .map(|i| held[i])
        .sum();
    assert_eq!(exact.working_set.resident, on_compute);
    let scaled = inv
        .units
        .iter()
        .map(|u| (u.bytes as f64 * largest).ceil() as u64)
        .collect();
    let over = plan(scaled);
    assert!(
        kept(&exact) < inv.units.len(),
        "a 24 GB card streams some blocks"
    );
    assert!(
        kept(&exact) > kept(&over),
        "{} vs {}",
        kept(&exact),
        kept(&over)
    );
}

/// fp8 compute on a GPU without fp8 tensor cores (compute capability under 8.9) is refused at
/// plan time, pointing at `dtype`; 8.9+, an unknown capability and the CPU plan.
#[test]
fn fp8_compute_needs_fp8_tensor_cores() {
    let fp8 = |compute: DeviceName| {
        let mut m = model(bytes(&[("cuda:0", Some(8.0)), ("cpu", None)]));
        m.workload.fp8_linears = true;
        m.compute = compute;
        m
    };
    let with_cap = |cap: Option<(u32, u32)>| {
        let mut h = hw("hw-4090-cpu.toml");
        h.devices[0].compute_capability = cap;
        h.devices[0].label = Some("NVIDIA GeForce RTX 3090".into());
        h
    };
    let r = one(fp8(DeviceName::Cuda(0)), &with_cap(Some((8, 6))));
    let e = r.as_ref().unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].location(), Some(Location::Dtype));
    assert_eq!(
        e.0[0].to_string(),
        "model `flux`: `dtype = \"fp8\"` multiplies on fp8 tensor cores, and `cuda:0` (NVIDIA GeForce RTX 3090) has compute capability 8.6; they need 8.9 or newer (Ada, Hopper, Blackwell)"
    );
    for cap in [Some((8, 9)), Some((9, 0)), Some((12, 0)), None] {
        assert!(
            one(fp8(DeviceName::Cuda(0)), &with_cap(cap)).is_ok(),
            "{cap:?}"
        );
    }
    let mut bf16 = fp8(DeviceName::Cuda(0));
    bf16.workload.fp8_linears = false;
    assert!(one(bf16, &with_cap(Some((7, 5)))).is_ok());
    let mut cpu = fp8(DeviceName::Cpu);
    cpu.allocation = bytes(&[("cpu", None)]);
    assert!(one(cpu, &with_cap(Some((7, 5)))).is_ok());
}
