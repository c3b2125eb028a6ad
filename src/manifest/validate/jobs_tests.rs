//! Every number of a job is bounded at `check`, with its line and the valid range.

use std::path::Path;

use super::{MAX_BATCH, MAX_STEPS, MAX_TOKENS};

const HEAD: &str = r#"[settings]
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
[[jobs]]
prompt = "p"
"#;

/// The rendered diagnostics of a job with `keys` (one per line, after line 23).
fn check(keys: &str) -> String {
    match crate::manifest::load_str(Path::new("m.toml"), &format!("{HEAD}{keys}\n")) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn huge_numbers_are_check_errors_with_their_line() {
    let e = check("steps = 4294967295");
    assert!(
        e.contains(&format!("`steps` must be 1 to {MAX_STEPS}, not 4294967295")),
        "{e}"
    );
    assert!(e.contains("m.toml:23:9"), "{e}");
    let e = check("batch = 100000");
    assert!(
        e.contains(&format!("`batch` must be 1 to {MAX_BATCH}")),
        "{e}"
    );
    for (keys, want) in [
        ("width = 4294967280", "`width` must be at most 16384"),
        ("guidance = 1e308", "`guidance` must be 0 to 1000"),
        ("cfg = 1e6", "`cfg` must be a number 0 to 1000"),
        ("shift = 1e300", "`shift` must be a number above 0"),
        ("guidance = nan", "`guidance` must be a finite number"),
    ] {
        let e = check(keys);
        assert!(e.contains(want), "{keys}: {e}");
        assert!(e.contains("m.toml:23:"), "{keys}: {e}");
    }
    let e = check("width = 16384\nheight = 16384");
    assert!(
        e.contains(&format!(
            "16384×16384 is 1048576 latent tokens; at most {MAX_TOKENS} fit"
        )),
        "{e}"
    );
    assert!(check("steps = 10000\nwidth = 2048\nheight = 2048\nbatch = 4").is_empty());
}

#[test]
fn nul_and_overlong_names_fail_check() {
    let e = check("output = \"a\\u0000b-{seed}.png\"");
    assert!(e.contains("NUL character in an output path"), "{e}");
    assert!(e.contains("m.toml:23:"), "{e}");
    // 255 - 12 = 243 bytes fit a file name: `{seed}` of seed 0 is one digit, `.png` four.
    let name = |n: usize| format!("output = \"{}{{seed}}.png\"", "x".repeat(n));
    assert!(check(&name(238)).is_empty(), "{}", check(&name(238)));
    let e = check(&name(239));
    assert!(
        e.contains("a file name of this output path would be 244 bytes long; at most 243 fit"),
        "{e}"
    );
    let e = check(&format!("output = \"{}/{{seed}}.png\"", "d".repeat(256)));
    assert!(e.contains("folder name"), "{e}");
}
