//! The manifest: the user's TOML contract (models, pipelines, jobs) as raw types that keep
//! spans, JSON-schema and semantic validation, and cargo-style diagnostics.
//!
//! Stages of [`load`] / [`load_str`]:
//! 1. TOML syntax ([`read::parse_document`], `toml::de::DeTable`: every key and value keeps
//!    its byte span). Syntax errors stop here, all of them reported.
//! 2. Shape ([`read`], [`raw`]): each table is read into its raw type; unknown keys (with
//!    "did you mean"), missing required keys, wrong types and values that do not parse
//!    (families, devices, sizes, allocation strings, samplers…) are reported, and reading goes
//!    on. The raw types also generate the JSON schema ([`schema`]), so the schema and this
//!    stage agree on keys, required keys and value syntax.
//! 3. Meaning ([`validate`]): references between models, pipelines and jobs, roles and
//!    families, number ranges, output templates and collisions, regexes → the validated
//!    [`Manifest`] ([`types`]). Warnings (non-runnable families, unused models) are kept in
//!    [`Manifest::warnings`].
//!
//! Nothing here touches the filesystem beyond reading the manifest: [`Manifest::check_files`]
//! checks that the files it names exist (used by `mgpu check`). Later stages point at the
//! manifest with [`Manifest::diagnostic_at`].

pub mod diag;
pub mod names;
pub mod raw;
pub(crate) mod read;
pub mod schema;
pub mod template;
pub mod types;
mod validate;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use diag::{Diagnostic, Diagnostics, Label, Severity, SourceFile};
pub use names::{ComputeDtype, FluxVariant, LoraMode};
pub use read::{Sp, NAME_PATTERN};
pub use template::{OutputTemplate, Var, Vars};
pub use types::{Job, JobImage, Lora, Model, Pipeline, Settings};

/// A validated manifest. Build one with [`load`] or [`load_str`].
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The manifest's path as given.
    pub path: PathBuf,
    /// The manifest's folder, absolute: relative paths in the manifest are resolved against it.
    pub dir: PathBuf,
    pub settings: Settings,
    pub models: BTreeMap<String, Model>,
    pub pipelines: BTreeMap<String, Pipeline>,
    /// In file order.
    pub jobs: Vec<Job>,
    /// Warnings found while loading (the manifest is valid despite them).
    #[serde(skip)]
    pub warnings: Diagnostics,
    #[serde(skip)]
    source: Arc<SourceFile>,
    /// Span of every value, by path: `models.flux.allocation`, `jobs.0.output`,
    /// `models.flux.loras.1.file`; and of every table: `models.flux`, `jobs.0`.
    #[serde(skip)]
    spans: BTreeMap<String, Range<usize>>,
}

/// Reads and validates the manifest at `path`. Relative paths inside it are resolved against
/// its folder; no other file is read.
pub fn load(path: &Path) -> Result<Manifest, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(path, &text),
        Err(e) => Err(Diagnostics::single(
            Diagnostic::error(format!("cannot read manifest `{}`: {e}", path.display()))
                .with_help("give the path of a TOML manifest, like `manifests/demo.toml`"),
        )),
    }
}

/// Validates manifest text as if read from `path` (used for messages and to resolve relative
/// paths).
pub fn load_str(path: &Path, text: &str) -> Result<Manifest, Diagnostics> {
    let src = SourceFile::new(path, text);
    let mut cx = read::Cx::new(src.clone());
    let manifest = read::parse_document(&src.text, &mut cx).and_then(|doc| {
        use read::FromToml;
        let raw = raw::RawManifest::from_toml(&doc, &mut cx, "")?;
        validate::validate(raw, &mut cx, path)
    });
    let mut diags = dedup(std::mem::take(&mut cx.diags));
    diags.sort();
    match manifest {
        Some(mut m) if !diags.has_errors() => {
            m.warnings = diags;
            Ok(m)
        }
        _ => Err(diags),
    }
}

/// Drops repeats (a `[defaults]` value reported once per job that uses it).
fn dedup(diags: Diagnostics) -> Diagnostics {
    let mut seen = std::collections::HashSet::new();
    diags
        .into_iter()
        .filter(|d| {
            seen.insert((
                d.message.clone(),
                d.primary.as_ref().map(|l| l.span.clone()),
            ))
        })
        .collect()
}

impl Manifest {
    /// The manifest's text, for diagnostics.
    pub fn source(&self) -> &Arc<SourceFile> {
        &self.source
    }

    /// The span of the value (or table) at `path` (`models.flux.allocation`, `jobs.2.output`),
    /// if the manifest wrote it.
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        self.spans.get(path).cloned()
    }

    /// An error pointing at key `key` of model `model` — at `range_within_value` of its string
    /// value (byte range of the string's content, like [`crate::alloc::EntrySpan`]'s), or at
    /// the whole value when `None`. `key` may be nested: `overrides.0.pattern`, `loras.1.file`.
    /// When the key is not written (a default applies), the diagnostic points at the model's
    /// table and says so.
    ///
    /// ```
    /// # use std::path::Path;
    /// let m = mgpu::manifest::load_str(Path::new("m.toml"), r#"
    /// [models.vae]
    /// family = "flux-vae"
    /// file = "ae.safetensors"
    /// compute = "cuda:0"
    /// allocation = "cuda:0,8gb;cuda:3,*"
    /// "#).unwrap();
    /// let mgpu::alloc::Allocation::Expert(e) = &m.models["vae"].allocation else { panic!() };
    /// let d = m.diagnostic_at("vae", "allocation", Some(e.entries[1].span.device.clone()),
    ///     "`cuda:3` is not on this machine", "devices here: cpu, cuda:0");
    /// assert!(d.render(false).contains("m.toml:6:26"));
    /// ```
    pub fn diagnostic_at(
        &self,
        model: &str,
        key: &str,
        range_within_value: Option<Range<usize>>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Diagnostic {
        self.diagnostic_at_path(
            &format!("models.{model}.{key}"),
            range_within_value,
            message,
            help,
        )
    }

    /// Like [`Manifest::diagnostic_at`], for any path: `jobs.0.width`, `pipelines.dev.vae`,
    /// `settings.output_root`.
    pub fn diagnostic_at_path(
        &self,
        path: &str,
        range_within_value: Option<Range<usize>>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Diagnostic {
        let d = Diagnostic::error(message).with_help(help);
        if let Some(span) = self.spans.get(path) {
            let span = match range_within_value {
                Some(r) => diag::content_span(&self.source.text, span.clone(), r),
                None => span.clone(),
            };
            return d.at(&self.source, span, "");
        }
        // Not written: point at the closest enclosing table that is.
        let mut parent = path;
        while let Some((p, _)) = parent.rsplit_once('.') {
            parent = p;
            if let Some(span) = self.spans.get(parent) {
                let key = &path[parent.len() + 1..];
                return d
                    .at(&self.source, span.clone(), "")
                    .with_note(format!("`{key}` is not written here: its default applies"));
            }
        }
        let mut d = d;
        d.source = Some(self.source.clone());
        d
    }

    /// Checks that every file the manifest names exists (weights, tokenizers, LoRAs, init
    /// images) and that the output root is not a file. Reports the resolved path.
    pub fn check_files(&self) -> Diagnostics {
        let mut out = Diagnostics::new();
        let mut folder_problems = Vec::new();
        let mut check = |path: &Path, at: String, what: &str| {
            let problem = match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Some(format!(
                    "{what} is a folder, not a file: {}",
                    path.display()
                )),
                Ok(m) if !m.is_file() => Some(format!(
                    "{what} is not a regular file (a FIFO, socket or device): {}",
                    path.display()
                )),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("{what} not found: {}", path.display()))
                }
                Err(e) => Some(format!("{what} cannot be read: {}: {e}", path.display())),
            };
            if let Some(msg) = problem {
                out.push(self.diagnostic_at_path(
                    &at,
                    None,
                    msg,
                    format!(
                        "relative paths are resolved against the manifest's folder, {}",
                        self.dir.display()
                    ),
                ));
            }
        };
        for (name, m) in &self.models {
            check(&m.file, format!("models.{name}.file"), "weights file");
            if let Some(t) = &m.tokenizer {
                // A Hugging Face tokenizer folder works as well as its file (issue 14): the
                // loader reads `tokenizer.json` (or `spiece.model`) from it.
                if t.is_dir() {
                    let inside = ["tokenizer.json", "spiece.model"]
                        .iter()
                        .any(|f| t.join(f).is_file());
                    if !inside {
                        folder_problems.push(self.diagnostic_at_path(
                            &format!("models.{name}.tokenizer"),
                            None,
                            format!(
                                "tokenizer folder {} holds neither `tokenizer.json` nor `spiece.model`",
                                t.display()
                            ),
                            "name the tokenizer file, or a Hugging Face tokenizer folder that \
                             holds one (FLUX.1-dev's `tokenizer_2/` for T5; for CLIP-L, \
                             openai/clip-vit-large-patch14, whose folder has `tokenizer.json`)",
                        ));
                    }
                } else {
                    check(t, format!("models.{name}.tokenizer"), "tokenizer file");
                }
            }
            for (i, l) in m.loras.iter().enumerate() {
                check(
                    &l.file,
                    format!("models.{name}.loras.{i}.file"),
                    "LoRA file",
                );
            }
        }
        for j in &self.jobs {
            if let Some(p) = &j.init_image {
                let at = format!("jobs.{}.init_image", j.index);
                check(p, at.clone(), "init image");
                if p.is_file() {
                    folder_problems.extend(self.check_init_image(j, p, &at));
                }
            }
        }
        if self.settings.output_root.is_file() {
            out.push(self.diagnostic_at_path(
                "settings.output_root",
                None,
                format!(
                    "the output root is a file: {}",
                    self.settings.output_root.display()
                ),
                "`output_root` must be a folder (it is created when missing)",
            ));
        }
        for d in folder_problems {
            out.push(d);
        }
        out.sort();
        out
    }

    /// Decodes the init image `path` of `job` (an existing file) and checks its size: an
    /// img2img init image must be the job's size; an image-to-video first frame may be any
    /// size (it is scaled and centre-cropped to the job's).
    fn check_init_image(&self, job: &Job, path: &Path, at: &str) -> Option<Diagnostic> {
        let decoded = image::ImageReader::open(path)
            .map_err(|e| e.to_string())
            .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
            .and_then(|r| r.decode().map_err(|e| e.to_string()));
        let img = match decoded {
            Ok(img) => img,
            Err(e) => {
                return Some(self.diagnostic_at_path(
                    at,
                    None,
                    format!("init image cannot be decoded: {}: {e}", path.display()),
                    "init images are PNG or JPEG files",
                ))
            }
        };
        let (w, h) = (img.width(), img.height());
        if w == 0 || h == 0 {
            return Some(self.diagnostic_at_path(
                at,
                None,
                format!("init image {} is empty ({w}x{h} pixels)", path.display()),
                "give an image of at least one pixel",
            ));
        }
        if !job.is_video() && (w, h) != (job.width, job.height) {
            return Some(self.diagnostic_at_path(
                at,
                None,
                format!(
                    "init image {} is {w}x{h} pixels but job `{}` is {}x{}",
                    path.display(),
                    job.name,
                    job.width,
                    job.height
                ),
                format!(
                    "img2img starts from the init image at the job's size: resize it to {}x{}, or set the job's `width = {w}` and `height = {h}`",
                    job.width, job.height
                ),
            ));
        }
        None
    }

    /// The models of pipeline `name`: diffusion, text encoders, VAE.
    pub fn pipeline_models(&self, name: &str) -> Option<(&Model, Vec<&Model>, &Model)> {
        let p = self.pipelines.get(name)?;
        let encoders = p
            .text_encoders
            .iter()
            .map(|e| self.models.get(e))
            .collect::<Option<Vec<_>>>()?;
        Some((
            self.models.get(&p.diffusion)?,
            encoders,
            self.models.get(&p.vae)?,
        ))
    }
}

#[cfg(test)]
#[path = "bounded_tests.rs"]
mod bounded_tests;
