//! Collision check at any size: symbolic for same-shape templates, listed otherwise, refused
//! above the listing limit.

use std::path::Path;

const HEAD: &str = r#"
[settings]
compute = "cuda:0"
[models.flux]
family = "flux"
file = "models/flux1-dev.safetensors"
[models.t5]
family = "t5"
file = "models/t5xxl_fp16.safetensors"
tokenizer = "models/t5-tokenizer.json"
[models.clip]
family = "clip-l"
file = "models/clip_l.safetensors"
tokenizer = "models/clip-tokenizer.json"
[models.vae]
family = "flux-vae"
file = "models/ae.safetensors"
[pipelines.dev]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"
"#;

fn job(name: &str, seed: u64, count: u32, output: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\nprompt = \"p\"\nseed = {seed}\ncount = {count}\noutput = \"{output}\"\n"
    )
}

/// The error messages of checking `jobs`.
fn errors(jobs: &[String]) -> Vec<String> {
    let text = format!("{HEAD}{}", jobs.concat());
    match crate::manifest::load_str(Path::new("m.toml"), &text) {
        Ok(_) => Vec::new(),
        Err(d) => d.iter().map(|d| d.message.clone()).collect(),
    }
}

#[test]
fn eleven_big_jobs_with_one_index_template_collide() {
    // The issue's case: 11 × 100 000 images, all `{index}.png`: 1.1 M images, found at once.
    let jobs: Vec<String> = (0..11)
        .map(|i| job(&format!("j{i}"), i * 1_000_000, 100_000, "{index}.png"))
        .collect();
    let t = std::time::Instant::now();
    let e = errors(&jobs);
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
    assert!(!e.is_empty());
    assert!(
        e.iter()
            .all(|m| m == "two images would be written to `0.png`"),
        "{e:?}"
    );
}

#[test]
fn seed_ranges_overlap_or_not() {
    let e = errors(&[
        job("a", 0, 100_000, "s{seed}.png"),
        job("b", 99_999, 100_000, "s{seed}.png"),
    ]);
    assert_eq!(e, ["two images would be written to `s99999.png`"]);
    let e = errors(&[
        job("a", 0, 100_000, "s{seed}.png"),
        job("b", 100_000, 100_000, "s{seed}.png"),
    ]);
    assert!(e.is_empty(), "{e:?}");
    // Many large jobs with distinct names: no listing at all, and no error.
    let jobs: Vec<String> = (0..30)
        .map(|i| job(&format!("j{i}"), 0, 100_000, "{job}/{index}.png"))
        .collect();
    let e = errors(&jobs);
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn padding_and_adjacent_numbers_are_listed() {
    // `{index:03}` and `{index}` meet at 100; `{index}{seed}` can meet with other indices.
    let e = errors(&[
        job("a", 0, 200, "{index:03}.png"),
        job("b", 0, 200, "{index}.png"),
    ]);
    assert_eq!(e, ["two images would be written to `100.png`"]);
    let e = errors(&[
        job("a", 22, 20, "{index}{seed}.png"),
        job("b", 233, 5, "{index}{seed}.png"),
    ]);
    assert_eq!(e, ["two images would be written to `1234.png`"]);
}

#[test]
fn a_template_whose_number_is_cancelled_collides_within_its_job() {
    let e = errors(&[job("a", 0, 3, "{index}/../x.png")]);
    assert_eq!(e, ["two images would be written to `x.png`"]);
}

#[test]
fn too_many_images_to_list_are_refused_with_the_limit() {
    let jobs: Vec<String> = (0..11)
        .map(|i| {
            job(
                &format!("j{i}"),
                i * 1_000_000,
                100_000,
                &format!("{{index:0{}}}.png", i % 3 + 1),
            )
        })
        .collect();
    let e = errors(&jobs);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("cannot check 1100000 images of jobs `j0`, `j1`"),
        "{e:?}"
    );
}
