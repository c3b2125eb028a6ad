//! Tests of the benchmark (`exec::bench`): placements, configs and the two-expert runs.

mod unit {
    use crate::exec::bench::*;
    use crate::models::flux::{self, FluxDit};

    pub(super) fn tiny_config(cfg: bool) -> BenchConfig {
        BenchConfig {
            model_name: "tiny".into(),
            width: 64,
            height: 64,
            frames: 1,
            txt_tokens: 8,
            steps: 2,
            warmup: 0,
            batches: vec![1, 3],
            placements: [
                "resident",
                "cpu:50",
                "cpu:100",
                "disk:100",
                "resident@q8_0",
                "cpu:100@q8_0",
                "resident@fp8",
                "cpu:100@fp8",
                "disk:100@fp8",
            ]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
            slots: 2,
            slots_for: Default::default(),
            dtype: DType::F32,
            seed: 7,
            cfg,
            experts: None,
            lora_rank: 0,
        }
    }

    /// The bench on the CPU, in a scratch folder.
    pub(super) fn run_on_cpu(config: &flux::Config, cfg: &BenchConfig) -> BenchReport {
        let dir = tempfile::tempdir().unwrap();
        run::<FluxDit>(
            config,
            cfg,
            &Device::Cpu,
            dir.path(),
            &mut Pools::default(),
            |_| {},
        )
        .unwrap()
    }

    #[test]
    fn spread_is_even_and_exact() {
        assert_eq!(spread(4, 50), [false, true, false, true]);
        assert_eq!(spread(4, 0), [false; 4]);
        assert_eq!(spread(4, 100), [true; 4]);
        for n in [19usize, 38, 57] {
            for p in [25u32, 50, 75] {
                let s = spread(n, p);
                assert_eq!(
                    s.iter().filter(|b| **b).count(),
                    (n * p as usize + 50) / 100,
                    "{n} {p}"
                );
            }
        }
    }

    #[test]
    fn placements_parse() {
        assert_eq!(
            "resident".parse::<Placement>().unwrap().to_string(),
            "resident"
        );
        assert_eq!("cpu:50".parse::<Placement>().unwrap().to_string(), "cpu:50");
        assert_eq!(
            "cuda:1:100".parse::<Placement>().unwrap().to_string(),
            "cuda:1:100"
        );
        assert!("cpu:150".parse::<Placement>().is_err());
        for p in [
            "resident@q4_k",
            "cpu:100@q8_0",
            "disk:50@fp8",
            "cuda:1:25@fp8-compute",
        ] {
            assert_eq!(p.parse::<Placement>().unwrap().to_string(), p);
        }
        assert!("cpu:100@q3"
            .parse::<Placement>()
            .unwrap_err()
            .contains("known: @q8_0, @q4_k, @fp8, @fp8-compute"));
        assert!("mps:10"
            .parse::<Placement>()
            .unwrap_err()
            .contains("not supported"));
    }

    /// On the tiny model, every placement and batch size computes the same bytes as the
    /// all-resident batch-1 run (the CPU version of the GPU bit-identity check).
    #[test]
    fn tiny_placements_are_bit_identical() {
        let cfg = tiny_config(false);
        let r = run_on_cpu(&flux::Config::tiny(), &cfg);
        assert_eq!(r.measurements.len(), 18);
        for m in &r.measurements {
            assert_eq!(m.identical, Some(true), "{} batch {}", m.placement, m.batch);
            assert_eq!(m.steps.len(), 2);
        }
        // Batch 3 jobs differ from each other (different inputs) but job 0 matches batch 1.
        let b3 = r.measurements.iter().find(|m| m.batch == 3).unwrap();
        assert_ne!(b3.hashes[0], b3.hashes[1]);
        let cpu100 = r
            .measurements
            .iter()
            .find(|m| m.placement == "cpu:100" && m.batch == 1)
            .unwrap();
        assert!(cpu100.streamed_bytes > 0);
        assert!(cpu100.steps.iter().all(|s| s.fetched_units == 4));
        // Q8_0 storage changes the values (so its own reference), and fewer bytes travel.
        let q8 = r
            .measurements
            .iter()
            .find(|m| m.placement == "cpu:100@q8_0" && m.batch == 1)
            .unwrap();
        assert_ne!(q8.hashes[0], cpu100.hashes[0]);
        assert!(q8.streamed_bytes < cpu100.streamed_bytes);
        // Scaled fp8: its own reference (resident@fp8, widened once), and the matrices travel
        // as one byte per value (fewer bytes than Q8_0's 34 per 32).
        let fp8 = r
            .measurements
            .iter()
            .find(|m| m.placement == "cpu:100@fp8" && m.batch == 1)
            .unwrap();
        assert_ne!(fp8.hashes[0], cpu100.hashes[0]);
        assert!(fp8.streamed_bytes < q8.streamed_bytes);
    }
    /// `@q4_k`: a FLUX small enough for the CPU but with rows of 256 values (hidden 64, MLP
    /// 256), so its MLP output matrices are Q4_K blocks (the others Q5_0, llama.cpp's
    /// fallback): every placement gives the bytes of the resident Q4_K run, and a streamed
    /// pass moves fewer bytes than with Q8_0.
    #[test]
    fn q4_k_placements_are_bit_identical() {
        let config = flux::Config {
            hidden_size: 64,
            axes_dim: vec![8, 12, 12],
            ..flux::Config::tiny()
        };
        let mut cfg = tiny_config(false);
        cfg.batches = vec![1];
        cfg.placements = [
            "resident@q4_k",
            "cpu:100@q4_k",
            "disk:50@q4_k",
            "resident@q8_0",
            "cpu:100@q8_0",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let r = run_on_cpu(&config, &cfg);
        for m in &r.measurements {
            assert_eq!(m.identical, Some(true), "{} batch {}", m.placement, m.batch);
        }
        let cell = |p: &str| r.measurements.iter().find(|m| m.placement == p).unwrap();
        assert!(cell("cpu:100@q4_k").streamed_bytes < cell("cpu:100@q8_0").streamed_bytes);
        assert_ne!(
            cell("cpu:100@q4_k").hashes[0],
            cell("cpu:100@q8_0").hashes[0]
        );
        assert_eq!(
            crate::exec::bench::Storage::Q4_K.stored(&[64, 256]),
            Some(crate::weights::DType::Q4_K)
        );
        assert_eq!(
            crate::exec::bench::Storage::Q4_K.stored(&[256, 64]),
            Some(crate::weights::DType::Q5_0)
        );
        assert_eq!(crate::exec::bench::Storage::Q4_K.stored(&[256, 48]), None);
        assert_eq!(crate::exec::bench::Storage::Q4_K.stored(&[256]), None);
    }

    /// `--lora-rank`: a LoRA term on every Q8_0 block matrix, added once on the CPU for the
    /// resident cell and at every fetch for the streamed ones: the same bytes either way, and
    /// not those of the model without it.
    #[test]
    fn lora_terms_on_the_blocks_keep_placements_identical() {
        let config = flux::Config::tiny();
        let mut cfg = tiny_config(false);
        cfg.batches = vec![1];
        cfg.placements = ["resident@q8_0", "cpu:100@q8_0", "disk:50@q8_0"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let plain = run_on_cpu(&config, &cfg);
        cfg.lora_rank = 3;
        let patched = run_on_cpu(&config, &cfg);
        for m in &patched.measurements {
            assert_eq!(m.identical, Some(true), "{} batch {}", m.placement, m.batch);
        }
        assert_ne!(plain.measurements[0].hashes, patched.measurements[0].hashes);
    }
}

mod cfg_tests {
    use crate::exec::bench::*;
    use crate::models::flux;

    /// With classifier-free guidance every job evaluates twice per step in the same pass;
    /// placements still compute the same bytes, and the guided output differs from the
    /// unguided one.
    #[test]
    fn guided_cells_are_bit_identical_and_guided() {
        let mut cfg = super::unit::tiny_config(true);
        cfg.placements = ["resident", "cpu:100", "disk:50"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let run_it = |c: &BenchConfig| super::unit::run_on_cpu(&flux::Config::tiny(), c);
        let guided = run_it(&cfg);
        assert_eq!(guided.evals_per_job, 2);
        for m in &guided.measurements {
            assert_eq!(m.identical, Some(true), "{} batch {}", m.placement, m.batch);
        }
        cfg.cfg = false;
        let plain = run_it(&cfg);
        assert_ne!(
            guided.measurements[0].hashes[0],
            plain.measurements[0].hashes[0]
        );
        // Twice the evaluations cost more than one pass of them on the same weights.
        let fetched = |r: &BenchReport| r.measurements[1].steps[0].fetched_units;
        assert_eq!(
            fetched(&guided),
            fetched(&plain),
            "one fetch serves both halves"
        );
    }
}

mod expert_tests {
    use crate::exec::bench::*;
    use crate::models::wan::{self, WanDit};

    /// Two tiny Wan experts (`mgpu bench --model wan22-tiny`): the run switches expert at the
    /// boundary on Wan 2.2's schedule, and every placement gives the same final latents.
    #[test]
    fn expert_runs_switch_and_are_bit_identical() {
        let mut cfg = super::unit::tiny_config(true);
        cfg.model_name = "wan22-tiny".into();
        (cfg.width, cfg.height, cfg.frames) = (32, 32, 5);
        cfg.steps = 6;
        cfg.warmup = 1;
        cfg.batches = vec![1, 2];
        cfg.experts = Some(0.875);
        cfg.placements = ["resident", "cpu:50", "cpu:100", "disk:100"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let run_it = |c: &BenchConfig| {
            run::<WanDit>(
                &wan::Config::tiny(),
                c,
                &Device::Cpu,
                dir.path(),
                &mut Pools::default(),
                |_| {},
            )
            .unwrap()
        };
        let r = run_it(&cfg);
        assert_eq!(r.measurements.len(), 8);
        // Shift 12, 7 flow_sigmas steps: timesteps 999, 986, 967, 941, 900, 828, 668 (diffusers)
        // → the first 5 are the high-noise expert's.
        for m in &r.measurements {
            assert_eq!(m.identical, Some(true), "{} batch {}", m.placement, m.batch);
            assert_eq!(m.switch_step, Some(5), "{}", m.placement);
            assert!(m.run_seconds > 0.0);
            assert_eq!(m.steps.len(), 6);
        }
        // Two experts: the parameters of both; one expert alone ends elsewhere.
        let one = wan::Config::tiny();
        let per_model: usize = spec::diffusion_layout::<WanDit>(&one)
            .unwrap()
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert_eq!(r.parameters, 2 * per_model as u64);
        cfg.experts = Some(0.01);
        let high_only = run_it(&cfg);
        assert_eq!(high_only.measurements[0].switch_step, None);
        assert_ne!(
            high_only.measurements[0].hashes[0],
            r.measurements[0].hashes[0]
        );
    }
}
