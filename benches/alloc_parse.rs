//! Allocation-string parsing speed: typical strings of each mode, a long one, and the error
//! path (all errors collected). Run: `cargo bench --bench alloc_parse`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mgpu::alloc::{parse, parse_all, Allocation};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_parse");
    let cases = [
        ("auto", "auto"),
        ("bytes", "cuda:0,2.5gb;cpu,*"),
        ("bytes_3dev", "cuda:0,500mb;cuda:1,3.0g;cpu,5gb*"),
        ("ratio", "cuda:0,25%;cpu,75%"),
        ("fraction", "cuda:0,0.0207;cuda:1,0.1273;cpu,0.0808"),
        ("virtual_vram", "virtual_vram=12GiB;donor=cuda:1"),
        (
            "bytes_8dev",
            "cuda:0,20GiB;cuda:1,20GiB;cuda:2,20GiB;cuda:3,20GiB;cuda:4,20GiB;cuda:5,20GiB;cuda:6,20GiB;cpu,*",
        ),
    ];
    for (name, s) in cases {
        assert!(parse(s).is_ok(), "{s}");
        g.bench_function(name, |b| b.iter(|| parse(black_box(s))));
    }
    let bad = "cuda:0,1xb;cdua:1,8gb;cpu,*;cpu,*";
    assert_eq!(parse_all(bad).unwrap_err().len(), 4);
    g.bench_function("errors_4", |b| b.iter(|| parse_all(black_box(bad))));
    let a: Allocation = "cuda:0,500mb;cuda:1,3.0g;cpu,5gb*".parse().unwrap();
    g.bench_function("display_3dev", |b| b.iter(|| black_box(&a).to_string()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
