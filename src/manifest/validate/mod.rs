//! Semantic validation: raw manifest → validated [`Manifest`], reporting every problem.
//!
//! Order: settings (output root, default compute device) → models (paths, compute device,
//! allocation vs virtual VRAM, overrides' regexes, LoRAs, per-family keys) → pipelines
//! (references exist and have the right role and family) → jobs (defaults, ranges, output
//! templates) → output collisions across all images. Nothing here touches the filesystem:
//! file existence is [`Manifest::check_files`].

mod collide;
mod jobs;
mod models;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::raw::RawManifest;
use super::read::{Cx, Sp};
use super::types::Settings;
use super::Manifest;
use crate::device::DeviceName;

/// Lexical normalisation: drops `.`, folds `a/..` (never touches the filesystem).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` resolved against `dir` (absolute paths stay as they are).
pub(crate) fn resolve(dir: &Path, s: &str) -> PathBuf {
    normalize(&dir.join(s))
}

/// What a path key holds, for extension checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    Weights,
    Lora,
    Other,
}

/// Checks a path value's text; `Some(text)` when usable.
pub(crate) fn check_path<'a>(cx: &mut Cx, v: &'a Sp<String>, kind: PathKind) -> Option<&'a str> {
    let s = v.value.as_str();
    if s.trim().is_empty() {
        cx.error(
            v.span.clone(),
            "empty path",
            "",
            Some("write a path relative to the manifest's folder".into()),
        );
        return None;
    }
    if s.starts_with('~') {
        cx.error(
            v.span.clone(),
            "`~` is not expanded in paths",
            "",
            Some(
                "write the path relative to the manifest's folder, or absolute (`/home/me/...`)"
                    .into(),
            ),
        );
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let ext = lower
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| !e.contains('/'))
        .unwrap_or("");
    let pickle = matches!(ext, "ckpt" | "pt" | "pth" | "bin" | "pkl");
    let ok = match kind {
        PathKind::Weights => matches!(ext, "safetensors" | "sft" | "gguf"),
        PathKind::Lora => matches!(ext, "safetensors" | "sft"),
        PathKind::Other => true,
    };
    if !ok {
        let what = if kind == PathKind::Lora {
            "LoRA files are .safetensors"
        } else {
            "weights are .safetensors or .gguf"
        };
        let (message, help) = if pickle {
            (
                format!("`.{ext}` files are not read: PyTorch pickles can run code when loaded"),
                format!("{what}; convert the file to safetensors (e.g. with `safetensors.torch.save_file`)"),
            )
        } else {
            (
                format!(
                    "unknown file type `{}`",
                    if ext.is_empty() { s } else { ext }
                ),
                what.to_string(),
            )
        };
        let span = if ext.is_empty() {
            v.span.clone()
        } else {
            cx.content(&v.span, s.len() - ext.len()..s.len())
        };
        cx.error(span, message, "", Some(help));
        return None;
    }
    Some(s)
}

/// Builds the validated manifest, or `None` when some part could not be built (the errors
/// are in `cx`).
pub(crate) fn validate(raw: RawManifest, cx: &mut Cx, path: &Path) -> Option<Manifest> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = normalize(&std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf()));

    let rs = raw.settings.map(|s| s.value).unwrap_or_default();
    let output_root = match &rs.output_root {
        Some(v) => check_path(cx, v, PathKind::Other).map(|s| resolve(&dir, s)),
        None => Some(dir.clone()),
    };
    let settings_compute = rs.compute.clone();
    if let Some(c) = &settings_compute {
        if c.value == DeviceName::Disk {
            disk_compute_error(cx, c.span.clone());
        }
    }
    let settings = output_root.map(|output_root| Settings {
        output_root,
        overwrite: rs.overwrite.is_some_and(|v| v.value),
        compute: settings_compute.as_ref().map(|c| c.value),
    });

    if let Some(m) = raw.models.as_ref().filter(|m| m.value.0.is_empty()) {
        cx.error(
            m.span.clone(),
            "`[models]` has no model",
            "",
            Some("define at least one model: `[models.NAME]` with `family` and `file`".into()),
        );
    }
    let raw_models = raw.models.map(|m| m.value.0).unwrap_or_default();
    let models = models::validate_models(cx, &raw_models, &dir, settings_compute.as_ref());
    let raw_pipelines = raw.pipelines.map(|p| p.value.0).unwrap_or_default();
    let pipelines = models::validate_pipelines(cx, &raw_pipelines, &raw_models);
    let raw_jobs = raw.jobs.map(|j| j.value).unwrap_or_default();
    let defaults = raw.defaults.map(|d| d.value).unwrap_or_default();
    let families = raw_models
        .iter()
        .filter_map(|(n, m)| Some((n.value.clone(), m.family.as_ref()?.value)))
        .collect::<BTreeMap<_, _>>();
    let root = settings
        .as_ref()
        .map(|s| s.output_root.clone())
        .unwrap_or_else(|| dir.clone());
    let jobs = jobs::validate_jobs(
        cx,
        &raw_jobs,
        &defaults,
        &raw_pipelines,
        &families,
        &dir,
        &root,
    );
    if raw_jobs.is_empty() {
        let mut d =
            crate::manifest::Diagnostic::warning("no `[[jobs]]`: `mgpu run` has nothing to do")
                .with_help(
                    "add a `[[jobs]]` table with a `prompt`; `mgpu plan` works without jobs",
                );
        d.source = Some(cx.src.clone());
        cx.push(d);
    }
    if let Some(jobs) = &jobs {
        collide::check_collisions(cx, jobs, &raw_jobs, &defaults);
    }
    Some(Manifest {
        path: path.to_path_buf(),
        dir,
        settings: settings?,
        models: models?,
        pipelines: pipelines?,
        jobs: jobs?,
        warnings: Default::default(),
        source: cx.src.clone(),
        spans: std::mem::take(&mut cx.spans),
    })
}

pub(crate) fn disk_compute_error(cx: &mut Cx, span: std::ops::Range<usize>) {
    cx.error(
        span,
        "`disk` cannot compute",
        "",
        Some(
            "`disk` only stores weights (in the memory-mapped file); compute on `cuda:N` or `cpu`"
                .into(),
        ),
    );
}
