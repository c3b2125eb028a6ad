//! Validation of `[models.*]` and `[pipelines.*]`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{check_path, disk_compute_error, resolve, PathKind};
use crate::alloc::{Allocation, Override};
use crate::device::DeviceName;
use crate::family::{Family, Role};
use crate::manifest::names::{ComputeDtype, LoraMode};
use crate::manifest::raw::{RawModel, RawPipeline};
use crate::manifest::read::{Cx, Sp};
use crate::manifest::types::{Lora, Model, Pipeline};
use crate::manifest::Diagnostic;
use crate::sample::names::suggest;

type Named<T> = [(Sp<String>, Sp<T>)];

pub(super) fn validate_models(
    cx: &mut Cx,
    raw: &Named<RawModel>,
    dir: &Path,
    settings_compute: Option<&Sp<DeviceName>>,
) -> Option<BTreeMap<String, Model>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, m) in raw {
        match validate_model(cx, &name.value, &m.value, &m.span, dir, settings_compute) {
            Some(model) => {
                out.insert(name.value.clone(), model);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn validate_model(
    cx: &mut Cx,
    name: &str,
    m: &RawModel,
    header: &std::ops::Range<usize>,
    dir: &Path,
    settings_compute: Option<&Sp<DeviceName>>,
) -> Option<Model> {
    let path = format!("models.{name}");
    let family = m.family.as_ref().map(|f| f.value);
    let file = m
        .file
        .as_ref()
        .and_then(|f| check_path(cx, f, PathKind::Weights))
        .map(|s| resolve(dir, s));

    // Compute device: the model's, else [settings].compute.
    let compute = match (&m.compute, settings_compute) {
        (Some(c), _) => {
            if c.value == DeviceName::Disk {
                disk_compute_error(cx, c.span.clone());
                None
            } else {
                Some(c.value)
            }
        }
        (None, Some(c)) => Some(c.value).filter(|d| *d != DeviceName::Disk),
        (None, None) => {
            // An invalid `compute` here or in [settings] was reported already.
            if !cx.spans.contains_key(&format!("{path}.compute"))
                && !cx.spans.contains_key("settings.compute")
            {
                cx.error(
                    header.clone(),
                    format!("model `{name}` has no compute device"),
                    "no `compute` here",
                    Some("add `compute = \"cuda:0\"` (or `\"cpu\"`) to this model, or a default `compute` in `[settings]`".into()),
                );
            }
            None
        }
    };

    let allocation = allocation(cx, &path, m, compute);
    let overrides = overrides(cx, m);
    let loras = loras(cx, m, dir);

    if let (Some(mode), Some(f)) = (&m.lora_mode, &m.file) {
        if mode.value == LoraMode::OnDequant && !f.value.to_ascii_lowercase().ends_with(".gguf") {
            cx.warning(
                mode.span.clone(),
                "`on_dequant` only applies to GGUF weights",
                "",
                Some("this model's file is not .gguf, so its LoRAs are baked in at load (`lora_mode = \"bake\"`)".into()),
            );
        }
    }

    // Keys that only some families have.
    let tokenizer = match (family.map(Family::role), &m.tokenizer) {
        (Some(Role::TextEncoder), Some(t)) => {
            check_path(cx, t, PathKind::Other).map(|s| Some(resolve(dir, s)))
        }
        // umT5 files saved by ComfyUI carry their SentencePiece model (`spiece_model`): the
        // weights file is the tokenizer when none is named (checked when it is loaded).
        (Some(Role::TextEncoder), None) if family == Some(Family::UmT5) => Some(None),
        (Some(Role::TextEncoder), None) => {
            if !cx.spans.contains_key(&format!("{path}.tokenizer")) {
                cx.error(
                    header.clone(),
                    format!("text encoder `{name}` has no `tokenizer`"),
                    "no `tokenizer` here",
                    Some("add `tokenizer = \"…/tokenizer.json\"`: the Hugging Face tokenizer file of this encoder, relative to the manifest's folder".into()),
                );
            }
            None
        }
        (Some(_), Some(t)) => {
            cx.error(
                t.span.clone(),
                format!(
                    "`tokenizer` is only for text encoders, and `{name}` is {}",
                    family.map(role_noun_of).unwrap_or("")
                ),
                "",
                Some("remove it; text encoders are the t5, clip-l and umt5 families".into()),
            );
            None
        }
        (None, _) => None,
        (Some(_), None) => Some(None),
    };
    if let (Some(v), Some(f)) = (&m.variant, family) {
        if f != Family::Flux {
            cx.error(
                v.span.clone(),
                format!("`variant` is only for flux models, and `{name}` is {f}"),
                "",
                Some("remove it".into()),
            );
        }
    }
    if let (Some(d), Some(f)) = (&m.dtype, family) {
        if d.value == ComputeDtype::Fp8 && !matches!(f, Family::Flux | Family::Wan) {
            cx.error(
                d.span.clone(),
                format!("`dtype = \"fp8\"` (fp8 compute) is implemented for flux and wan models, and `{name}` is {f}"),
                "",
                Some("use bf16 here; an fp8 file still travels as fp8 and is widened on the compute device".into()),
            );
        }
    }
    if let Some(p) = &m.prefetch {
        if !(1..=64).contains(&p.value) {
            cx.error(
                p.span.clone(),
                format!("`prefetch` must be 1 to 64, not {}", p.value),
                "",
                Some("prefetch is the number of block slots on the compute device; 1 means no copy/compute overlap, 2 or 3 is usual".into()),
            );
        }
    }
    if let Some(t) = &m.decode_tile {
        if !(16..=4096).contains(&t.value) {
            cx.error(
                t.span.clone(),
                format!(
                    "`decode_tile` must be 16 to 4096 latent pixels, not {}",
                    t.value
                ),
                "",
                Some(
                    "64 (512-pixel image tiles) is a good start; smaller tiles use less memory"
                        .into(),
                ),
            );
        }
        if let Some(f) = family.filter(|f| f.role() != Role::Vae) {
            cx.error(
                t.span.clone(),
                format!("`decode_tile` is only for VAEs, and `{name}` is {f}"),
                "",
                Some("put it on the pipeline's `vae` model".into()),
            );
        }
    }
    let compute = compute?;
    Some(Model {
        name: name.to_string(),
        family: family?,
        file: file?,
        compute,
        allocation: allocation?,
        overrides: overrides?,
        loras: loras?,
        lora_mode: m.lora_mode.as_ref().map_or(LoraMode::Bake, |v| v.value),
        dtype: m
            .dtype
            .as_ref()
            .map_or(ComputeDtype::default_for(compute), |v| v.value),
        tokenizer: tokenizer?,
        variant: m
            .variant
            .as_ref()
            .map(|v| v.value)
            .filter(|_| family == Some(Family::Flux)),
        prefetch: m
            .prefetch
            .as_ref()
            .map(|p| p.value)
            .filter(|p| (1..=64).contains(p)),
        keep_loaded: m.keep_loaded.as_ref().is_some_and(|v| v.value),
        decode_tile: m
            .decode_tile
            .as_ref()
            .map(|t| t.value)
            .filter(|t| (16..=4096).contains(t) && family.is_some_and(|f| f.role() == Role::Vae)),
    })
}

fn role_noun_of(f: Family) -> &'static str {
    match f.role() {
        Role::Diffusion => "a diffusion model",
        Role::TextEncoder => "a text encoder",
        Role::Vae => "a VAE",
    }
}

/// `allocation`, or `virtual_vram` + `donor`, or the default `auto`.
fn allocation(
    cx: &mut Cx,
    path: &str,
    m: &RawModel,
    compute: Option<DeviceName>,
) -> Option<Allocation> {
    let given = |key: &str| cx.spans.contains_key(&format!("{path}.{key}"));
    let (has_alloc, has_vram, has_donor) =
        (given("allocation"), given("virtual_vram"), given("donor"));
    if has_alloc && has_vram {
        let (a, v) = (
            cx.spans[&format!("{path}.allocation")].clone(),
            cx.spans[&format!("{path}.virtual_vram")].clone(),
        );
        let d = Diagnostic::error("`allocation` and `virtual_vram` cannot both be set")
            .at(&cx.src, v, "")
            .with_secondary(a, "allocation given here")
            .with_help(
                "they are two ways to say the same thing: keep `allocation` (e.g. `cuda:0,12gb;cpu,*`) or \
                 `virtual_vram` + `donor` (that many bytes move from the compute device to the donor)",
            );
        cx.push(d);
        return None;
    }
    if has_donor && !has_vram {
        let span = cx.spans[&format!("{path}.donor")].clone();
        cx.error(
            span,
            "`donor` without `virtual_vram`",
            "",
            Some("`donor` says where `virtual_vram` weights go: add `virtual_vram = \"12GiB\"`, or name the device in `allocation` (`cuda:0,12gb;cuda:1,*`)".into()),
        );
        return None;
    }
    let alloc = if has_vram {
        let bytes = m.virtual_vram.as_ref()?.value;
        if has_donor && m.donor.is_none() {
            return None;
        }
        Allocation::VirtualVram {
            bytes,
            donor: m.donor.as_ref().map_or(DeviceName::Cpu, |d| d.value),
        }
    } else if has_alloc {
        m.allocation.as_ref()?.value.clone()
    } else {
        Allocation::Auto
    };
    if let (Allocation::VirtualVram { donor, .. }, Some(c)) = (&alloc, compute) {
        if *donor == c {
            let key = if has_donor {
                "donor"
            } else if has_vram {
                "virtual_vram"
            } else {
                "allocation"
            };
            let span = cx.spans[&format!("{path}.{key}")].clone();
            cx.error(
                span,
                format!("the donor is the compute device `{c}`: virtual VRAM would move nothing"),
                "",
                Some(format!(
                    "set `donor` to another device{}",
                    if c == DeviceName::Cpu {
                        " (`disk` leaves weights in the memory-mapped file)"
                    } else {
                        " (`cpu` by default)"
                    }
                )),
            );
            return None;
        }
    }
    Some(alloc)
}

fn overrides(cx: &mut Cx, m: &RawModel) -> Option<Vec<Override>> {
    let mut out = Vec::new();
    let mut ok = true;
    for o in m
        .overrides
        .as_ref()
        .map(|o| o.value.as_slice())
        .unwrap_or_default()
    {
        let (Some(p), Some(d)) = (&o.value.pattern, &o.value.device) else {
            ok = false;
            continue;
        };
        match compile(cx, p) {
            Some(_) if p.value.is_empty() => {
                cx.error(
                    p.span.clone(),
                    "empty override pattern",
                    "",
                    Some(PATTERN_HELP.into()),
                );
                ok = false;
            }
            Some(re) => out.push(Override {
                pattern: re,
                device: d.value,
            }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

const PATTERN_HELP: &str = "`pattern` is a regular expression (Rust `regex` syntax) matched against whole unit names \
like `single_blocks.37` and tensor names like `double_blocks.0.img_attn.qkv.weight`; escape dots as `\\\\.` in TOML \
basic strings, or use a literal string: 'single_blocks\\.3[0-7]'";

/// Compiles an override pattern, reporting syntax errors with a caret into the pattern.
fn compile(cx: &mut Cx, p: &Sp<String>) -> Option<regex::Regex> {
    let pattern = &p.value;
    if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
        let (kind, span) = match &e {
            regex_syntax::Error::Parse(e) => (
                e.kind().to_string(),
                e.span().start.offset..e.span().end.offset,
            ),
            regex_syntax::Error::Translate(e) => (
                e.kind().to_string(),
                e.span().start.offset..e.span().end.offset,
            ),
            other => (other.to_string(), 0..pattern.len()),
        };
        let span = cx.content(&p.span, span);
        cx.error(
            span,
            format!("invalid regex: {kind}"),
            "",
            Some(PATTERN_HELP.into()),
        );
        return None;
    }
    match Override::new(pattern, DeviceName::Cpu) {
        Ok(o) => Some(o.pattern),
        Err(e) => {
            cx.error(
                p.span.clone(),
                format!("invalid regex: {e}"),
                "",
                Some(PATTERN_HELP.into()),
            );
            None
        }
    }
}

fn loras(cx: &mut Cx, m: &RawModel, dir: &Path) -> Option<Vec<Lora>> {
    let mut out = Vec::new();
    let mut ok = true;
    for l in m
        .loras
        .as_ref()
        .map(|o| o.value.as_slice())
        .unwrap_or_default()
    {
        let file = l
            .value
            .file
            .as_ref()
            .and_then(|f| check_path(cx, f, PathKind::Lora));
        match file {
            Some(f) => out.push(Lora {
                file: resolve(dir, f),
                strength: l.value.strength.as_ref().map_or(1.0, |s| s.value),
                strict: l.value.strict.as_ref().is_none_or(|s| s.value),
            }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The families of the text encoders and the VAE a diffusion family needs.
fn companions(f: Family) -> (&'static [Family], Family) {
    f.companions()
        .unwrap_or((&[Family::ClipL, Family::T5], Family::FluxVae))
}

pub(super) fn validate_pipelines(
    cx: &mut Cx,
    raw: &Named<RawPipeline>,
    models: &Named<RawModel>,
) -> Option<BTreeMap<String, Pipeline>> {
    let family_of: BTreeMap<&str, Option<Family>> = models
        .iter()
        .map(|(n, m)| (n.value.as_str(), m.value.family.as_ref().map(|f| f.value)))
        .collect();
    let mut used: BTreeMap<&str, bool> = family_of.keys().map(|k| (*k, false)).collect();
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, p) in raw {
        let p = &p.value;
        let mut lookup =
            |cx: &mut Cx, r: &Sp<String>, key: &str, role: Role| -> Option<Option<Family>> {
                let Some(&fam) = family_of.get(r.value.as_str()) else {
                    let names: Vec<&str> = family_of.keys().copied().collect();
                    let dym = suggest(&r.value, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    cx.error(
                        r.span.clone(),
                        format!("no model named `{}`", r.value),
                        "",
                        Some(format!(
                            "{dym}models: {}",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        )),
                    );
                    return None;
                };
                used.insert(
                    family_of
                        .get_key_value(r.value.as_str())
                        .map_or("", |(k, _)| *k),
                    true,
                );
                if let Some(f) = fam {
                    if f.role() != role {
                        let fitting: Vec<&str> = family_of
                            .iter()
                            .filter(|(_, f)| f.is_some_and(|f| f.role() == role))
                            .map(|(n, _)| *n)
                            .collect();
                        cx.error(
                            r.span.clone(),
                            format!(
                                "`{key}` needs {}, but `{}` is {} (family {f})",
                                role_noun(role),
                                r.value,
                                role_noun(f.role())
                            ),
                            "",
                            Some(if fitting.is_empty() {
                                format!(
                                    "no model here is {}: its families are {}",
                                    role_noun(role),
                                    role_families(role)
                                )
                            } else {
                                format!("{} here: {}", role_plural(role), fitting.join(", "))
                            }),
                        );
                        return None;
                    }
                }
                Some(fam)
            };
        let diffusion = p
            .diffusion
            .as_ref()
            .and_then(|d| lookup(cx, d, "diffusion", Role::Diffusion));
        let mut encoders: Vec<(Sp<String>, Option<Family>)> = Vec::new();
        let mut enc_ok = p.text_encoders.is_some();
        for e in p
            .text_encoders
            .as_ref()
            .map(|t| t.value.as_slice())
            .unwrap_or_default()
        {
            if let Some(first) = encoders.iter().find(|(f, _)| f.value == e.value) {
                let d = Diagnostic::error(format!("`{}` is listed twice", e.value))
                    .at(&cx.src, e.span.clone(), "")
                    .with_secondary(first.0.span.clone(), "first listed here")
                    .with_help("list each text encoder once");
                cx.push(d);
                enc_ok = false;
                continue;
            }
            match lookup(cx, e, "text_encoders", Role::TextEncoder) {
                Some(f) => encoders.push((e.clone(), f)),
                None => enc_ok = false,
            }
        }
        let vae = p.vae.as_ref().and_then(|v| lookup(cx, v, "vae", Role::Vae));
        // Family pairing: FLUX needs clip-l + t5 + flux-vae; Wan needs umt5 + wan-vae.
        if let Some(Some(df)) = diffusion {
            let (need, vae_family) = companions(df);
            // Skip when an encoder's family is unknown (already reported): no cascades.
            if enc_ok && encoders.iter().all(|(_, f)| f.is_some()) {
                let list_span = p.text_encoders.as_ref().map_or(0..0, |t| t.span.clone());
                for f in need {
                    if !encoders.iter().any(|(_, ef)| *ef == Some(*f)) {
                        let have: Vec<&str> = family_of
                            .iter()
                            .filter(|(_, ff)| **ff == Some(*f))
                            .map(|(n, _)| *n)
                            .collect();
                        cx.error(
                            list_span.clone(),
                            format!("pipeline `{}` has no {f} text encoder, which {df} needs", name.value),
                            "",
                            Some(if have.is_empty() {
                                format!("define a `[models.NAME]` with `family = \"{f}\"` and list it here")
                            } else {
                                format!("add {} to `text_encoders`", have.iter().map(|h| format!("`\"{h}\"`")).collect::<Vec<_>>().join(" or "))
                            }),
                        );
                        enc_ok = false;
                    }
                }
                let mut seen: Vec<Family> = Vec::new();
                for (e, ef) in &encoders {
                    let Some(ef) = ef else { continue };
                    if !need.contains(ef) {
                        cx.error(
                            e.span.clone(),
                            format!("{df} does not use a {ef} text encoder"),
                            "",
                            Some(format!(
                                "{df} uses {}",
                                need.iter()
                                    .map(|f| f.name())
                                    .collect::<Vec<_>>()
                                    .join(" and ")
                            )),
                        );
                        enc_ok = false;
                    } else if seen.contains(ef) {
                        cx.error(
                            e.span.clone(),
                            format!("a second {ef} text encoder"),
                            "",
                            Some(format!(
                                "{df} uses one {}",
                                need.iter()
                                    .map(|f| f.name())
                                    .collect::<Vec<_>>()
                                    .join(" and one ")
                            )),
                        );
                        enc_ok = false;
                    }
                    seen.push(*ef);
                }
            }
            if let (Some(Some(vf)), Some(v)) = (vae, &p.vae) {
                if vf != vae_family {
                    cx.error(
                        v.span.clone(),
                        format!("{df} needs a {vae_family} VAE, but `{}` is {vf}", v.value),
                        "",
                        Some(format!("use a model with `family = \"{vae_family}\"`")),
                    );
                    ok = false;
                }
            }
        }
        let experts = experts(cx, p, diffusion, &mut lookup);
        let text_len = max_sequence_length(cx, p, diffusion);
        match (
            &p.diffusion,
            enc_ok,
            &p.vae,
            diffusion,
            vae,
            experts,
            text_len,
        ) {
            (
                Some(d),
                true,
                Some(v),
                Some(_),
                Some(_),
                Some((low_noise, boundary)),
                Some(max_sequence_length),
            ) => {
                out.insert(
                    name.value.clone(),
                    Pipeline {
                        name: name.value.clone(),
                        diffusion: d.value.clone(),
                        low_noise,
                        boundary,
                        max_sequence_length,
                        text_encoders: encoders.into_iter().map(|(e, _)| e.value).collect(),
                        vae: v.value.clone(),
                    },
                );
            }
            _ => ok = false,
        }
    }
    // Unused models are only worth a warning when every reference resolved.
    if !raw.is_empty() && !cx.diags.has_errors() {
        for (n, m) in models {
            if used.get(n.value.as_str()) == Some(&false) {
                cx.warning(
                    m.span.clone(),
                    format!("model `{}` is not used by any pipeline", n.value),
                    "",
                    Some("list it in a `[pipelines.NAME]` table, or remove it".into()),
                );
            }
        }
    }
    ok.then_some(out)
}

/// The family that has a low-noise expert (Wan 2.2 A14B).
const EXPERT_FAMILY: Family = Family::Wan;

/// T5's longest input (FLUX.1-dev's default) and shortest (`</s>` and one prompt token).
const T5_TOKENS: std::ops::RangeInclusive<u32> = 2..=512;

/// A pipeline's `max_sequence_length`: 2…512, and only for FLUX (Wan pads umT5's text to 512
/// inside the model). `None` when an error was reported.
fn max_sequence_length(
    cx: &mut Cx,
    p: &RawPipeline,
    diffusion: Option<Option<Family>>,
) -> Option<Option<u32>> {
    let Some(n) = &p.max_sequence_length else {
        return Some(None);
    };
    if !T5_TOKENS.contains(&n.value) {
        cx.error(
            n.span.clone(),
            format!(
                "`max_sequence_length` must be {} to {}, not {}",
                T5_TOKENS.start(),
                T5_TOKENS.end(),
                n.value
            ),
            "",
            Some("it is how many tokens T5 encodes, `</s>` included: 512 is FLUX.1-dev's default, 256 schnell's; a prompt longer than it is cut".into()),
        );
        return None;
    }
    match diffusion {
        Some(Some(f)) if f != Family::Flux => {
            cx.error(
                n.span.clone(),
                format!("`max_sequence_length` is for FLUX pipelines, and `diffusion` is {f}"),
                "",
                Some(format!("{f} models pad their text to the length they were trained with; remove `max_sequence_length`")),
            );
            None
        }
        _ => Some(Some(n.value)),
    }
}

/// A pipeline's `diffusion_low_noise` and `boundary`: the low-noise expert exists, is a
/// diffusion model of the same family as `diffusion` (a family with experts), is not
/// `diffusion` itself; `boundary` lies in (0, 1) and comes only with an expert. `None` when
/// an error was reported.
#[allow(clippy::type_complexity)]
fn experts(
    cx: &mut Cx,
    p: &RawPipeline,
    diffusion: Option<Option<Family>>,
    lookup: &mut dyn FnMut(&mut Cx, &Sp<String>, &str, Role) -> Option<Option<Family>>,
) -> Option<(Option<String>, Option<f64>)> {
    let mut ok = true;
    let boundary = match (&p.boundary, &p.diffusion_low_noise) {
        (Some(b), None) => {
            cx.error(
                b.span.clone(),
                "`boundary` without `diffusion_low_noise`",
                "",
                Some("the boundary is where a Wan 2.2 A14B pipeline switches from `diffusion` (high-noise expert) to `diffusion_low_noise`: name the low-noise expert, or remove `boundary`".into()),
            );
            ok = false;
            None
        }
        (Some(b), Some(_)) if !(b.value > 0.0 && b.value < 1.0) => {
            cx.error(
                b.span.clone(),
                format!("`boundary` must be more than 0 and less than 1, not {}", b.value),
                "",
                Some("it is a fraction of the 1000 training timesteps: Wan 2.2 uses 0.875 for text-to-video and 0.9 for image-to-video (the default from the weights)".into()),
            );
            ok = false;
            None
        }
        (b, _) => b.as_ref().map(|b| b.value),
    };
    let low = match &p.diffusion_low_noise {
        None => None,
        Some(l) => {
            let fam = lookup(cx, l, "diffusion_low_noise", Role::Diffusion);
            if p.diffusion.as_ref().is_some_and(|d| d.value == l.value) {
                cx.error(
                    l.span.clone(),
                    format!("`diffusion_low_noise` names `{}`, the `diffusion` model itself", l.value),
                    "",
                    Some("Wan 2.2 A14B has two experts in two files: `diffusion` is the high-noise one (`…high_noise…`), `diffusion_low_noise` the low-noise one (`…low_noise…`)".into()),
                );
                ok = false;
            }
            match (fam, diffusion) {
                (None, _) => ok = false,
                (Some(Some(lf)), Some(Some(df))) if lf != df => {
                    cx.error(
                        l.span.clone(),
                        format!("`diffusion_low_noise` is a {lf} model, but `diffusion` is {df}"),
                        "",
                        Some("both experts are models of the same family".into()),
                    );
                    ok = false;
                }
                (Some(Some(lf)), _) if lf != EXPERT_FAMILY => {
                    cx.error(
                        l.span.clone(),
                        format!("{lf} has no low-noise expert"),
                        "",
                        Some(format!("`diffusion_low_noise` is for {EXPERT_FAMILY} (Wan 2.2 A14B); remove it")),
                    );
                    ok = false;
                }
                _ => {}
            }
            Some(l.value.clone())
        }
    };
    ok.then_some((low, boundary))
}

fn role_noun(r: Role) -> &'static str {
    match r {
        Role::Diffusion => "a diffusion model",
        Role::TextEncoder => "a text encoder",
        Role::Vae => "a VAE",
    }
}

fn role_plural(r: Role) -> &'static str {
    match r {
        Role::Diffusion => "diffusion models",
        Role::TextEncoder => "text encoders",
        Role::Vae => "VAEs",
    }
}

fn role_families(r: Role) -> String {
    crate::family::ALL
        .iter()
        .filter(|f| f.role() == r)
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}
