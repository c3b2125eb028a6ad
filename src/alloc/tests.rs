//! Table, snapshot and property tests of the allocation language.

use super::*;
use crate::units::{GIB, MIB};
use proptest::prelude::*;

fn bytes(device: DeviceName, b: u64) -> Entry {
    Entry::new(device, Some(Value::Bytes(ByteSize(b))), false)
}

fn expert(mode: Mode, entries: Vec<Entry>) -> Allocation {
    Allocation::Expert(ExpertAllocation { mode, entries })
}

const CPU: DeviceName = DeviceName::Cpu;
const C0: DeviceName = DeviceName::Cuda(0);
const C1: DeviceName = DeviceName::Cuda(1);

#[test]
fn parses_table() {
    let wild = |d| Entry::new(d, None, true);
    let pct = |d, p| Entry::new(d, Some(Value::Percent(p)), false);
    let frac = |d, f| Entry::new(d, Some(Value::Fraction(f)), false);
    let cases: Vec<(&str, Allocation)> = vec![
        ("auto", Allocation::Auto),
        (" AUTO ", Allocation::Auto),
        (
            "cuda:0,2.5gb;cpu,*",
            expert(Mode::Bytes, vec![bytes(C0, 5 * GIB / 2), wild(CPU)]),
        ),
        (
            "cuda:0,500mb;cuda:1,3.0g;cpu,5gb*",
            expert(
                Mode::Bytes,
                vec![
                    bytes(C0, 500 * MIB),
                    bytes(C1, 3 * GIB),
                    Entry::new(CPU, Some(Value::Bytes(ByteSize::gib(5))), true),
                ],
            ),
        ),
        (
            "cuda:0, 4 GiB ; cpu , * ;",
            expert(Mode::Bytes, vec![bytes(C0, 4 * GIB), wild(CPU)]),
        ),
        (
            "cuda:0,1024;cpu,*",
            expert(Mode::Bytes, vec![bytes(C0, 1024), wild(CPU)]),
        ),
        ("cuda,8gb", expert(Mode::Bytes, vec![bytes(C0, 8 * GIB)])),
        ("cpu,*", expert(Mode::Bytes, vec![wild(CPU)])),
        (
            "cuda:0,8gb;disk,*",
            expert(
                Mode::Bytes,
                vec![bytes(C0, 8 * GIB), wild(DeviceName::Disk)],
            ),
        ),
        (
            "cuda:0,25%;cpu,75%",
            expert(Mode::Ratio, vec![pct(C0, 25.0), pct(CPU, 75.0)]),
        ),
        (
            "cuda:0,8%;cuda:1,8%;cpu,4%",
            expert(Mode::Ratio, vec![pct(C0, 8.0), pct(C1, 8.0), pct(CPU, 4.0)]),
        ),
        (
            "cuda:0,50%;cpu,*",
            expert(Mode::Ratio, vec![pct(C0, 50.0), wild(CPU)]),
        ),
        (
            "cuda:0,0.1;cpu,0.5",
            expert(Mode::Fraction, vec![frac(C0, 0.1), frac(CPU, 0.5)]),
        ),
        (
            "cuda:0,1.0;cuda:1,.5",
            expert(Mode::Fraction, vec![frac(C0, 1.0), frac(C1, 0.5)]),
        ),
        (
            "virtual_vram=12gb;donor=cuda:1",
            Allocation::VirtualVram {
                bytes: ByteSize::gib(12),
                donor: C1,
            },
        ),
        (
            "virtual_vram = 4GiB",
            Allocation::VirtualVram {
                bytes: ByteSize::gib(4),
                donor: CPU,
            },
        ),
        (
            "donor=cpu;virtual_vram=4GiB;",
            Allocation::VirtualVram {
                bytes: ByteSize::gib(4),
                donor: CPU,
            },
        ),
    ];
    for (s, want) in cases {
        assert_eq!(parse(s).as_ref(), Ok(&want), "{s}");
        // Display is canonical and parses back to the same value.
        let shown = want.to_string();
        assert_eq!(parse(&shown).as_ref(), Ok(&want), "{s} → {shown}");
    }
}

#[test]
fn display_table() {
    let cases = [
        ("cuda:0,2.5gb;cpu,*", "cuda:0,2.5GiB;cpu,*"),
        ("CUDA,500mb;cpu,5gb*", "cuda:0,500MiB;cpu,5GiB*"),
        ("cuda:0,25%;cpu,75%", "cuda:0,25%;cpu,75%"),
        ("cuda:0,12.5%;cpu,*", "cuda:0,12.5%;cpu,*"),
        ("cuda:0,1.;cpu,.5", "cuda:0,1.0;cpu,0.5"),
        ("cuda:0,0;cpu,*", "cuda:0,0B;cpu,*"),
        ("Auto", "auto"),
        ("virtual_vram=4096mb", "virtual_vram=4GiB;donor=cpu"),
    ];
    for (s, want) in cases {
        assert_eq!(parse(s).unwrap().to_string(), want, "{s}");
    }
}

#[test]
fn spans_point_at_parts() {
    let s = " cuda:0, 2.5gb ; cpu,*";
    let Allocation::Expert(e) = parse(s).unwrap() else {
        panic!()
    };
    let parts: Vec<(&str, &str, &str)> = e
        .entries
        .iter()
        .map(|e| {
            (
                &s[e.span.entry.clone()],
                &s[e.span.device.clone()],
                &s[e.span.value.clone()],
            )
        })
        .collect();
    assert_eq!(
        parts,
        [("cuda:0, 2.5gb", "cuda:0", "2.5gb"), ("cpu,*", "cpu", "*")]
    );
}

#[test]
fn mode_is_decided_by_values_not_device_letters() {
    // DisTorch2 looked for g/m/k/b anywhere in the string: a device name spelled with those
    // letters flipped a ratio string into bytes mode. Here only values decide.
    let a = parse("cuda:0,25%;cpu,75%").unwrap();
    assert_eq!(a.mode(), Some(Mode::Ratio));
    let a = parse("disk,0.5%;cuda:0,*").unwrap();
    assert_eq!(a.mode(), Some(Mode::Ratio));
    // `mps` itself is refused as a device, with the reason, not misread as a mode.
    let e = parse("mps,25%;cpu,75%").unwrap_err();
    assert_eq!(
        e.to_string(),
        "`mps` is not supported: mgpu runs on CPUs and CUDA GPUs"
    );
}

#[test]
fn serde_and_from_str() {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct W {
        a: Allocation,
    }
    let w: W = toml::from_str("a = \"cuda:0,8gb;cpu,*\"").unwrap();
    assert_eq!(w.a, parse("cuda:0,8gb;cpu,*").unwrap());
    assert_eq!(
        toml::to_string(&w).unwrap().trim(),
        "a = \"cuda:0,8GiB;cpu,*\""
    );
    let e = toml::from_str::<W>("a = \"cuda:0,8xb;cpu,*\"")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown unit `xb`") && e.contains("^^"), "{e}");
    let e = "cuda:0,1gb;;cpu,*".parse::<Allocation>().unwrap_err();
    assert_eq!(e.errors.len(), 1);
}

#[test]
fn all_errors_are_reported() {
    let errs = parse_all("cuda:0,1xb;cdua:1,8gb;cpu,*;cpu,*").unwrap_err();
    let kinds: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        kinds,
        [
            "unknown unit `xb`",
            "unknown device `cdua:1`",
            "`cpu` has more than one entry",
            "more than one `*`"
        ]
    );
}

/// Every error class, rendered with its caret and help. One case per [`AllocErrorKind`]
/// variant (and a few variants twice where the help differs); `every_kind_is_snapshotted`
/// keeps the table complete.
const ERROR_CASES: &[(&str, &str)] = &[
    ("empty", "  "),
    ("distorch_suffix", "cuda:0,4gb;cpu,*#cuda:0;4.0;cpu"),
    ("empty_entry", "cuda:0,1gb;;cpu,*"),
    ("empty_entry_leading", ";cuda:0,1gb"),
    ("missing_comma_device", "cuda:0,8gb;cpu"),
    ("missing_comma_other", "cuda:0,8gb;lots"),
    ("comma_in_value", "cuda:0,1gb,cpu,*"),
    ("empty_value", "cuda:0,;cpu,*"),
    ("empty_device", ",8gb;cpu,*"),
    ("unknown_device", "cdua:1,8gb;cpu,*"),
    ("unsupported_device", "cuda:0,25%;mps,75%"),
    ("bad_device_index", "cuda:x,8gb;cpu,*"),
    ("unknown_unit", "cuda:0,2tib;cuda:1,3pb;cpu,*"),
    ("unknown_unit_exponent", "cuda:0,1e9;cpu,*"),
    ("size_bad_number", "cuda:0,1.2.3gb;cpu,*"),
    ("size_too_large", "cuda:0,99999999999tb;cpu,*"),
    ("bad_value", "cuda:0,lots%;cpu,*"),
    ("negative", "cuda:0,-2gb;cpu,*"),
    ("negative_percent", "cuda:0,-25%;cpu,*"),
    ("not_finite", "cuda:0,nan;cpu,0.5"),
    ("not_finite_percent", "cuda:0,inf%;cpu,*"),
    ("percent_over_100", "cuda:0,150%;cpu,*"),
    ("fraction_over_1", "cuda:0,1.5;cpu,0.5"),
    ("value_then_wildcard_ratio", "cuda:0,25%;cpu,75%*"),
    ("value_then_wildcard_fraction", "cuda:0,0.5;cpu,0.5*"),
    ("mixed_modes", "cuda:0,25%;cpu,4gb"),
    ("mixed_modes_bare_integer", "cuda:0,0.5;cpu,1"),
    ("duplicate_device", "cuda:0,4gb;cuda,2gb;cpu,*"),
    ("multiple_wildcards", "cuda:0,*;cpu,*"),
    ("wildcard_in_fraction", "cuda:0,0.5;cpu,*"),
    ("disk_in_fraction", "cuda:0,0.5;disk,0.5"),
    ("percent_sum_over_100", "cuda:0,60%;cuda:1,50%;cpu,*"),
    ("percent_sum_zero", "cuda:0,0%;cpu,0%"),
    ("unknown_virtual_key", "virtual_ram=4gb;donor=cpu"),
    ("duplicate_virtual_key", "virtual_vram=4gb;virtual_vram=8gb"),
    ("bad_virtual_entry", "virtual_vram=4gb;cpu"),
    ("missing_virtual_vram", "donor=cuda:1"),
    ("virtual_bad_size", "virtual_vram=4 gigs"),
    ("virtual_bad_donor", "virtual_vram=4gb;donor=gpu1"),
    ("virtual_empty_value", "virtual_vram=;donor=cpu"),
];

fn kind_name(k: &AllocErrorKind) -> &'static str {
    use AllocErrorKind::*;
    match k {
        Empty => "Empty",
        DisTorchSuffix => "DisTorchSuffix",
        EmptyEntry => "EmptyEntry",
        MissingComma { .. } => "MissingComma",
        CommaInValue { .. } => "CommaInValue",
        EmptyValue { .. } => "EmptyValue",
        Device(_) => "Device",
        Size(_) => "Size",
        BadValue(_) => "BadValue",
        Negative(_) => "Negative",
        NotFinite(_) => "NotFinite",
        PercentOver100(_) => "PercentOver100",
        FractionOver1(_) => "FractionOver1",
        ValueThenWildcard { .. } => "ValueThenWildcard",
        MixedModes { .. } => "MixedModes",
        DuplicateDevice { .. } => "DuplicateDevice",
        MultipleWildcards => "MultipleWildcards",
        WildcardInFraction => "WildcardInFraction",
        DiskInFraction => "DiskInFraction",
        PercentSumOver100 { .. } => "PercentSumOver100",
        PercentSumZero => "PercentSumZero",
        UnknownVirtualKey { .. } => "UnknownVirtualKey",
        DuplicateVirtualKey(_) => "DuplicateVirtualKey",
        BadVirtualEntry(_) => "BadVirtualEntry",
        MissingVirtualVram => "MissingVirtualVram",
    }
}

#[test]
fn error_snapshots() {
    for (name, input) in ERROR_CASES {
        let err = input.parse::<Allocation>().expect_err(name);
        insta::assert_snapshot!(format!("error_{name}"), err.to_string(), input);
    }
}

#[test]
fn every_kind_is_snapshotted() {
    let seen: std::collections::BTreeSet<&str> = ERROR_CASES
        .iter()
        .flat_map(|(_, s)| parse_all(s).unwrap_err())
        .map(|e| kind_name(&e.kind))
        .collect();
    let all = [
        "Empty",
        "DisTorchSuffix",
        "EmptyEntry",
        "MissingComma",
        "CommaInValue",
        "EmptyValue",
        "Device",
        "Size",
        "BadValue",
        "Negative",
        "NotFinite",
        "PercentOver100",
        "FractionOver1",
        "ValueThenWildcard",
        "MixedModes",
        "DuplicateDevice",
        "MultipleWildcards",
        "WildcardInFraction",
        "DiskInFraction",
        "PercentSumOver100",
        "PercentSumZero",
        "UnknownVirtualKey",
        "DuplicateVirtualKey",
        "BadVirtualEntry",
        "MissingVirtualVram",
    ];
    for k in all {
        assert!(seen.contains(k), "no snapshot case produces {k}");
    }
}

#[test]
fn overrides_match_whole_names() {
    let o = Override::new(r"single_blocks\.(3[0-7])", CPU).unwrap();
    assert!(o.matches("single_blocks.37"));
    assert!(!o.matches("single_blocks.37.linear1.weight"));
    assert!(!o.matches("xsingle_blocks.30"));
    assert_eq!(o.pattern_str(), r"single_blocks\.(3[0-7])");
    let list = [
        Override::new(r"single_blocks\..*", C1).unwrap(),
        Override::new(r".*", CPU).unwrap(),
    ];
    assert_eq!(
        Override::first_match(&list, "single_blocks.2.linear1.weight"),
        Some(C1)
    );
    assert_eq!(Override::first_match(&list, "img_in.weight"), Some(CPU));
    assert_eq!(
        serde_json::to_string(&list[0]).unwrap(),
        r#"{"pattern":"single_blocks\\..*","device":"cuda:1"}"#
    );
}

fn device_pool(allow_disk: bool) -> Vec<DeviceName> {
    let mut v = vec![CPU];
    if allow_disk {
        v.push(DeviceName::Disk);
    }
    v.extend((0..6).map(DeviceName::Cuda));
    v
}

/// Valid allocations of every mode.
fn valid_allocation() -> impl Strategy<Value = Allocation> {
    let bytes_mode = (
        proptest::sample::subsequence(device_pool(true), 1..5),
        prop::collection::vec(any::<u64>(), 5),
        any::<Option<usize>>(),
        any::<bool>(),
    )
        .prop_map(|(devs, vals, wild, wild_value)| {
            let n = devs.len();
            let w = wild.map(|i| i % n);
            let entries = devs
                .into_iter()
                .zip(vals)
                .enumerate()
                .map(|(i, (d, v))| {
                    let is_w = w == Some(i);
                    let value = (!is_w || wild_value).then_some(Value::Bytes(ByteSize(v)));
                    Entry::new(d, value, is_w)
                })
                .collect();
            expert(Mode::Bytes, entries)
        });
    let ratio_mode = (
        proptest::sample::subsequence(device_pool(true), 1..5),
        prop::collection::vec(0.0f64..=100.0, 5),
        any::<Option<usize>>(),
    )
        .prop_filter_map("needs a share above 0", |(devs, vals, wild)| {
            let n = devs.len();
            let w = wild.map(|i| i % n);
            let scale = if w.is_some() { 1.0 / n as f64 } else { 1.0 };
            let entries: Vec<Entry> = devs
                .into_iter()
                .zip(vals)
                .enumerate()
                .map(|(i, (d, v))| {
                    if w == Some(i) {
                        Entry::new(d, None, true)
                    } else {
                        Entry::new(d, Some(Value::Percent(v * scale)), false)
                    }
                })
                .collect();
            let sum: f64 = entries
                .iter()
                .filter_map(|e| e.value)
                .map(|v| if let Value::Percent(p) = v { p } else { 0.0 })
                .sum();
            let has_value = entries.iter().any(|e| e.value.is_some());
            (has_value && (w.is_some() || sum > 0.0)).then(|| expert(Mode::Ratio, entries))
        });
    let fraction_mode = (
        proptest::sample::subsequence(device_pool(false), 1..5),
        prop::collection::vec(0.0f64..=1.0, 5),
    )
        .prop_map(|(devs, vals)| {
            let entries = devs
                .into_iter()
                .zip(vals)
                .map(|(d, v)| Entry::new(d, Some(Value::Fraction(v)), false))
                .collect();
            expert(Mode::Fraction, entries)
        });
    let virt =
        (any::<u64>(), proptest::sample::select(device_pool(true))).prop_map(|(b, donor)| {
            Allocation::VirtualVram {
                bytes: ByteSize(b),
                donor,
            }
        });
    prop_oneof![
        Just(Allocation::Auto),
        bytes_mode,
        ratio_mode,
        fraction_mode,
        virt
    ]
}

/// Strings made of the language's own characters, to reach deep into the parser.
fn grammar_soup() -> impl Strategy<Value = String> {
    "([ ]?(cpu|cuda|cuda:[0-9]|disk|mps|cdua:1|x)?[ ]?,?[ ]?(\\*|[0-9.]{0,4}|-1|nan)(gb|mb|%|b|xb|)?\\*?;?){0,5}(#|=|,|;)?"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn display_round_trips(a in valid_allocation()) {
        let s = a.to_string();
        prop_assert_eq!(parse(&s), Ok(a), "{}", s);
    }

    #[test]
    fn schema_pattern_accepts_what_the_parser_accepts(a in valid_allocation(), spaces in any::<bool>()) {
        let re = regex::Regex::new(&ALLOCATION_PATTERN).unwrap();
        let mut s = a.to_string();
        if spaces {
            s = format!(" {} ", s.replace(',', " , ").replace(';', " ; "));
        }
        prop_assert!(parse(&s).is_ok(), "{}", s);
        prop_assert!(re.is_match(&s), "{}", s);
    }

    #[test]
    fn never_panics_and_spans_are_valid(s in "\\PC{0,40}") {
        check_errors(&s)?;
    }

    #[test]
    fn never_panics_on_near_misses(s in grammar_soup()) {
        check_errors(&s)?;
        let re = regex::Regex::new(&ALLOCATION_PATTERN).unwrap();
        if parse(&s).is_ok() {
            prop_assert!(re.is_match(&s), "schema pattern rejects {:?}", s);
        }
    }
}

fn check_errors(s: &str) -> Result<(), TestCaseError> {
    if let Err(errs) = parse_all(s) {
        prop_assert!(!errs.is_empty());
        for e in &errs {
            prop_assert!(
                e.span.end <= s.len(),
                "{:?} out of bounds in {:?}",
                e.span,
                s
            );
            prop_assert!(
                s.get(e.span.clone()).is_some(),
                "{:?} not on char boundaries in {:?}",
                e.span,
                s
            );
            let _ = e.render(s);
        }
    }
    Ok(())
}
