//! The A1111/Forge "infotext": the `parameters` PNG text chunk that civitai, A1111, Forge and
//! most image browsers read. One type, [`Infotext`], with `FromStr` (A1111's parsing rules),
//! `Display` (A1111's writing rules), serde (as the text) and a JSON schema.
//!
//! Format (A1111 `modules/infotext_utils.py` and `processing.py`, read, not copied):
//! ```text
//! <prompt, any number of lines> <lora:style:0.8>
//! Negative prompt: <negative prompt>          (only when there is one)
//! Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, Size: 1024x1024, Model hash: abcdef0123, Model: flux1-dev, Lora hashes: "style: e3b0c44298fc", Version: mgpu 0.1.0, Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16
//! ```
//! - Each LoRA is named in the prompt as A1111 users write it, `<lora:NAME:STRENGTH>` (NAME:
//!   the file stem), appended unless the prompt already has a tag for it.
//! - The last line is `key: value` pairs joined by `, `. A value containing `,`, `:` or a newline
//!   is written as a JSON string (A1111 `quote`); reading undoes it (`unquote`).
//! - Reading: the last line counts as parameters only if it holds at least 3 pairs (regex
//!   `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`); other lines are the prompt, up to
//!   a line starting with `Negative prompt:`, after which they are the negative prompt. Lines
//!   are trimmed, as A1111 does — the exact prompt is in the `mgpu` JSON record.
//! - mgpu writes, in Forge's order for FLUX: Steps, Sampler, Schedule type (A1111 display names:
//!   `Euler`, `Euler a`, `Heun`, `DPM++ 2M`, `DPM++ 2M SDE`, `DDIM`; `Simple`, `Normal`, `Karras`,
//!   `Exponential`, `Beta`, `SGM Uniform`), CFG scale, Distilled CFG Scale (FLUX.1-dev
//!   guidance), Seed, Size (`WxH`), Model hash (first 10 hex digits of the file's SHA-256,
//!   civitai "AutoV2"), Model (file stem), Denoising strength (img2img only), Lora hashes
//!   (`name: first 12 digits of the AutoV3 hash`, LoRAs that have one), Version (`mgpu X.Y.Z`),
//!   then `Module N` for the VAE and text encoders (file stems), as Forge writes for FLUX.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::record::{file_stem, ImageRecord};
use crate::family::Role;
use crate::sample::{Sampler, Scheduler};

/// A1111's `re_param_code`.
static PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
        .expect("constant regex is valid")
});

/// Generation parameters in A1111's text format (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// `key: value` pairs in order, values unquoted.
    pub params: Vec<(String, String)>,
}

/// A1111's display name of a sampler.
pub fn a1111_sampler(s: Sampler) -> &'static str {
    match s {
        Sampler::Euler => "Euler",
        Sampler::EulerAncestral => "Euler a",
        Sampler::Heun => "Heun",
        Sampler::Dpmpp2m => "DPM++ 2M",
        Sampler::Dpmpp2mSde => "DPM++ 2M SDE",
        Sampler::Ddim => "DDIM",
        Sampler::UniPc => "UniPC",
        // A1111 has one "UniPC" with the variant as a setting (default bh1).
        Sampler::UniPcBh2 => "UniPC bh2",
    }
}

/// A1111's display name of a schedule type.
pub fn a1111_scheduler(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Simple => "Simple",
        Scheduler::Normal => "Normal",
        Scheduler::Karras => "Karras",
        Scheduler::Exponential => "Exponential",
        Scheduler::Beta => "Beta",
        Scheduler::SgmUniform => "SGM Uniform",
        // No A1111 equivalent: mgpu's own display names.
        Scheduler::SimpleExact => "Simple Exact",
        Scheduler::FlowSigmas => "Flow Sigmas",
    }
}

/// The sampler an A1111 display name (or a ComfyUI name) stands for.
pub fn sampler_from_a1111(name: &str) -> Option<Sampler> {
    Sampler::ALL
        .iter()
        .copied()
        .find(|&s| a1111_sampler(s).eq_ignore_ascii_case(name.trim()))
        .or_else(|| Sampler::parse(name).ok())
}

/// The scheduler an A1111 display name (or a ComfyUI name) stands for.
pub fn scheduler_from_a1111(name: &str) -> Option<Scheduler> {
    Scheduler::ALL
        .iter()
        .copied()
        .find(|&s| a1111_scheduler(s).eq_ignore_ascii_case(name.trim()))
        .or_else(|| Scheduler::parse(name).ok())
}

/// A1111 `quote`: JSON-quote a value that holds `,`, `:` or a newline.
fn quote(v: &str) -> Cow<'_, str> {
    if v.contains([',', '\n', ':']) {
        Cow::Owned(serde_json::to_string(v).expect("a string always serialises"))
    } else {
        Cow::Borrowed(v)
    }
}

/// A1111 `unquote`: undo [`quote`], leaving anything that is not a valid JSON string as is.
fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(v) {
            return s;
        }
    }
    v.to_string()
}

impl Infotext {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The infotext mgpu writes for a record (see the module docs for the keys and order).
    pub fn from_record(r: &ImageRecord) -> Self {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| p.push((k.to_string(), v));
        push("Steps", r.steps.to_string());
        push("Sampler", a1111_sampler(r.sampler).to_string());
        push("Schedule type", a1111_scheduler(r.scheduler).to_string());
        push("CFG scale", r.cfg_scale.to_string());
        if let Some(g) = r.guidance {
            push("Distilled CFG Scale", g.to_string());
        }
        push("Seed", r.seed.to_string());
        push("Size", format!("{}x{}", r.width, r.height));
        if let Some(m) = r.diffusion_model() {
            if let Some(h) = &m.sha256 {
                push("Model hash", h.chars().take(10).collect());
            }
            push("Model", file_stem(&m.file));
        }
        if r.is_img2img() {
            push("Denoising strength", r.denoise.to_string());
        }
        let lora_hashes: Vec<String> = r
            .loras
            .iter()
            .filter_map(|l| {
                l.autov3
                    .as_ref()
                    .map(|h| format!("{}: {}", l.name, h.chars().take(12).collect::<String>()))
            })
            .collect();
        if !lora_hashes.is_empty() {
            push("Lora hashes", lora_hashes.join(", "));
        }
        push("Version", format!("mgpu {}", r.mgpu_version));
        let modules = r
            .models
            .iter()
            .filter(|m| m.family.role() != Role::Diffusion);
        for (i, m) in modules.enumerate() {
            push(&format!("Module {}", i + 1), file_stem(&m.file));
        }
        Infotext {
            prompt: prompt_with_loras(&r.prompt, &r.loras),
            negative_prompt: r.negative_prompt.clone(),
            params: p,
        }
    }
}

/// The prompt with A1111's `<lora:name:strength>` tag of every LoRA the prompt does not
/// already name, appended after a space, so image browsers (and A1111's "PNG Info") show the
/// LoRAs and their strengths (issue 14). The exact prompt stays in the `mgpu` record.
pub fn prompt_with_loras(prompt: &str, loras: &[super::record::LoraRecord]) -> String {
    let mut out = prompt.to_string();
    for l in loras {
        if out.contains(&format!("<lora:{}:", l.name)) {
            continue;
        }
        if !out.is_empty() && !out.ends_with(char::is_whitespace) {
            out.push(' ');
        }
        out.push_str(&format!("<lora:{}:{}>", l.name, l.strength));
    }
    out
}

impl fmt::Display for Infotext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prompt)?;
        if let Some(neg) = self.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            write!(f, "\nNegative prompt: {neg}")?;
        }
        if !self.params.is_empty() {
            f.write_str("\n")?;
            for (i, (k, v)) in self.params.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {}", quote(v))?;
            }
        }
        Ok(())
    }
}

impl FromStr for Infotext {
    /// Any text is an infotext: what is not parameters is prompt, as in A1111.
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Infallible> {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let mut last = lines.pop().unwrap_or_default();
        if PARAM.captures_iter(last).count() < 3 {
            lines.push(last);
            last = "";
        }
        let (mut prompt, mut negative, mut in_negative) = (String::new(), None::<String>, false);
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                line = rest.trim();
            }
            let target = if in_negative {
                negative.get_or_insert_with(String::new)
            } else {
                &mut prompt
            };
            if !target.is_empty() {
                target.push('\n');
            }
            target.push_str(line);
        }
        let params = PARAM
            .captures_iter(last)
            .map(|c| (c[1].to_string(), unquote(&c[2])))
            .collect();
        Ok(Infotext {
            prompt,
            negative_prompt: negative.filter(|n| !n.is_empty()),
            params,
        })
    }
}

impl Serialize for Infotext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Infotext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        Ok(s.parse().unwrap_or_else(|e: Infallible| match e {}))
    }
}

impl JsonSchema for Infotext {
    fn schema_name() -> Cow<'static, str> {
        "Infotext".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A1111-style generation parameters: prompt lines, an optional `Negative prompt:` line, then `Key: value, …`.",
            "type": "string"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::example;
    use super::*;

    fn parse(s: &str) -> Infotext {
        s.parse().unwrap_or_else(|e: Infallible| match e {})
    }

    #[test]
    fn writes_forge_style_for_flux() {
        let text = Infotext::from_record(&example()).to_string();
        assert_eq!(
            text,
            "a cat on a windowsill, morning light <lora:style:0.8>\n\
             Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, \
             Size: 1024x1024, Model hash: abcdef0123, Model: flux1-dev, Lora hashes: \"style: e3b0c44298fc\", \
             Version: mgpu 0.1.0, Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16"
        );
        let mut img2img = example();
        img2img.denoise = 0.45;
        img2img.guidance = None;
        img2img.negative_prompt = Some("blurry, low quality".into());
        img2img.loras.clear();
        let text = Infotext::from_record(&img2img).to_string();
        assert!(
            text.contains("\nNegative prompt: blurry, low quality\nSteps: 20"),
            "{text}"
        );
        assert!(
            text.contains("Model: flux1-dev, Denoising strength: 0.45, Version"),
            "{text}"
        );
        assert!(!text.contains("Distilled"), "{text}");
    }

    #[test]
    fn loras_are_tagged_in_the_prompt_once() {
        let r = example();
        let mut two = r.loras.clone();
        two.push(super::super::record::LoraRecord {
            name: "detail".into(),
            strength: -0.25,
            ..r.loras[0].clone()
        });
        assert_eq!(
            prompt_with_loras("a cat", &two),
            "a cat <lora:style:0.8> <lora:detail:-0.25>"
        );
        // A prompt that already names a LoRA keeps its own tag.
        assert_eq!(
            prompt_with_loras("a cat <lora:style:0.5>", &two),
            "a cat <lora:style:0.5> <lora:detail:-0.25>"
        );
        assert_eq!(prompt_with_loras("", &two[..1]), "<lora:style:0.8>");
        // It survives A1111's parser.
        let back = parse(&Infotext::from_record(&r).to_string());
        assert!(back.prompt.ends_with("<lora:style:0.8>"), "{back:?}");
    }

    /// Table of A1111 inputs and what A1111's parser makes of them.
    #[test]
    fn parses_like_a1111() {
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            ("a cat\nSteps: 20, Sampler: Euler, Seed: 1", "a cat", None, &[("Steps", "20"), ("Sampler", "Euler"), ("Seed", "1")]),
            // Fewer than 3 pairs on the last line: it is prompt.
            ("a cat\nStyle: photo, Mood: calm", "a cat\nStyle: photo, Mood: calm", None, &[]),
            (
                "  line one  \n line two\nNegative prompt: ugly,\n  blurry \nSteps: 4, Seed: 7, Size: 512x512",
                "line one\nline two",
                Some("ugly,\nblurry"),
                &[("Steps", "4"), ("Seed", "7"), ("Size", "512x512")],
            ),
            (
                "p\nSteps: 25, Lora hashes: \"a: 0123456789ab, b: ba9876543210\", Model: x, Note: \"say \\\"hi\\\"\"",
                "p",
                None,
                &[("Steps", "25"), ("Lora hashes", "a: 0123456789ab, b: ba9876543210"), ("Model", "x"), ("Note", "say \"hi\"")],
            ),
            ("only a prompt", "only a prompt", None, &[]),
            ("", "", None, &[]),
        ];
        for (input, prompt, neg, params) in cases {
            let t = parse(input);
            assert_eq!(t.prompt, *prompt, "{input:?}");
            assert_eq!(t.negative_prompt.as_deref(), *neg, "{input:?}");
            let got: Vec<(&str, &str)> = t
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(got, *params, "{input:?}");
        }
    }

    #[test]
    fn round_trips_and_maps_names_back() {
        let t = Infotext::from_record(&example());
        let back = parse(&t.to_string());
        assert_eq!(back, t);
        assert_eq!(
            sampler_from_a1111(back.get("Sampler").unwrap()),
            Some(Sampler::Euler)
        );
        assert_eq!(
            scheduler_from_a1111(back.get("Schedule type").unwrap()),
            Some(Scheduler::Simple)
        );
        for &s in Sampler::ALL {
            assert_eq!(sampler_from_a1111(a1111_sampler(s)), Some(s));
            assert_eq!(sampler_from_a1111(s.name()), Some(s));
        }
        for &s in Scheduler::ALL {
            assert_eq!(scheduler_from_a1111(a1111_scheduler(s)), Some(s));
        }
        assert_eq!(sampler_from_a1111("DPM++ 2M Karras"), None);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Infotext>(&json).unwrap(), t);
    }
}
