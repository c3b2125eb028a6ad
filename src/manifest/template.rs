//! Output path templates: `out/{job}/fox-{seed:05}.png`.
//!
//! One type, [`OutputTemplate`], parsed once (unknown placeholders, unbalanced braces, paths
//! that would leave the output root, missing `.png` are errors with byte ranges) and rendered
//! per image by [`OutputTemplate::render`]. Placeholder values can never contain `/` or be `..`
//! (names are `[A-Za-z0-9_-]+`), so checking the template's literal path segments is enough
//! to keep every output inside the output root.

use std::fmt;
use std::ops::Range;

use serde::{Serialize, Serializer};

/// A placeholder of an output template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    /// The image's seed (`seed + index`).
    Seed,
    /// The image's index within its job, from 0.
    Index,
    /// The job's name.
    Job,
    /// The pipeline's name.
    Pipeline,
    Width,
    Height,
    Steps,
    Sampler,
    Scheduler,
}

const VARS: &[(&str, Var)] = &[
    ("seed", Var::Seed),
    ("index", Var::Index),
    ("job", Var::Job),
    ("pipeline", Var::Pipeline),
    ("width", Var::Width),
    ("height", Var::Height),
    ("steps", Var::Steps),
    ("sampler", Var::Sampler),
    ("scheduler", Var::Scheduler),
];

impl Var {
    fn is_number(self) -> bool {
        matches!(
            self,
            Var::Seed | Var::Index | Var::Width | Var::Height | Var::Steps
        )
    }
}

/// The placeholder list for help texts.
pub fn placeholders_help() -> String {
    let names: Vec<String> = VARS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
    format!(
        "placeholders are {}; numbers can be zero-padded, like {{seed:05}}; write {{{{ and }}}} for literal braces",
        names.join(", ")
    )
}

/// One piece of a template's [`OutputTemplate::shape`]: a character, or a number that changes
/// from image to image (zero-padded to a width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Tok {
    Char(char),
    Seed(usize),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var { var: Var, width: usize },
}

/// A parsed output path template.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTemplate {
    text: String,
    parts: Vec<Part>,
}

/// The values of one image's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub seed: u64,
    pub index: u32,
    pub job: &'a str,
    pub pipeline: &'a str,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub sampler: &'a str,
    pub scheduler: &'a str,
}

/// A problem in a template; `span` is a byte range of the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub span: Range<usize>,
    pub message: String,
    pub help: String,
}

impl OutputTemplate {
    /// Parses and checks a template; reports every problem.
    pub fn parse(text: &str) -> Result<Self, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut err = |span: Range<usize>, message: String, help: String| {
            errors.push(TemplateError {
                span,
                message,
                help,
            });
        };
        let mut parts: Vec<Part> = Vec::new();
        let mut lit = String::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    lit.push('{');
                    i += 2;
                }
                b'}' if b.get(i + 1) == Some(&b'}') => {
                    lit.push('}');
                    i += 2;
                }
                b'}' => {
                    err(
                        i..i + 1,
                        "unmatched `}`".into(),
                        "write `}}` for a literal `}`".into(),
                    );
                    i += 1;
                }
                b'{' => {
                    let close = text[i + 1..].find(['}', '{']).map(|j| i + 1 + j);
                    let Some(close) = close.filter(|&c| b[c] == b'}') else {
                        let end = close.unwrap_or(text.len());
                        err(
                            i..end,
                            "unclosed `{`".into(),
                            "close the placeholder with `}`, or write `{{` for a literal `{`"
                                .into(),
                        );
                        // Read the rest as text, so later checks (the `.png` ending) do not cascade.
                        lit.push_str(&text[i..end]);
                        i = end;
                        continue;
                    };
                    let inner = &text[i + 1..close];
                    let span = i..close + 1;
                    i = close + 1;
                    let (name, spec) = match inner.split_once(':') {
                        Some((n, s)) => (n, Some(s)),
                        None => (inner, None),
                    };
                    if name.is_empty() {
                        err(span, "empty placeholder `{}`".into(), placeholders_help());
                        continue;
                    }
                    let Some(&(_, var)) = VARS.iter().find(|(n, _)| *n == name) else {
                        let dym = crate::sample::names::suggest(name, VARS.iter().map(|(n, _)| *n))
                            .map(|s| format!("did you mean `{{{s}}}`? "))
                            .unwrap_or_default();
                        err(
                            span,
                            format!("unknown placeholder `{{{name}}}`"),
                            format!("{dym}{}", placeholders_help()),
                        );
                        continue;
                    };
                    let width = match spec {
                        None => 0,
                        Some(s) => {
                            match s.strip_prefix('0').and_then(|w| w.parse::<usize>().ok()) {
                                Some(w)
                                    if var.is_number() && (1..=20).contains(&w) && s.len() > 1 =>
                                {
                                    w
                                }
                                _ if !var.is_number() => {
                                    err(
                                        span,
                                        format!(
                                            "`{{{name}}}` is not a number and cannot be padded"
                                        ),
                                        placeholders_help(),
                                    );
                                    continue;
                                }
                                _ => {
                                    err(
                                    span,
                                    format!("bad format `:{s}` in `{{{name}}}`"),
                                    format!("zero-pad numbers to a width of 1 to 20 digits, like `{{{name}:05}}`"),
                                );
                                    continue;
                                }
                            }
                        }
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var { var, width });
                }
                _ => {
                    // Copy one whole character.
                    let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                    lit.push(ch);
                    i += ch.len_utf8().max(1);
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        check_path(text, &parts, &mut errors);
        if errors.is_empty() {
            Ok(OutputTemplate {
                text: text.to_string(),
                parts,
            })
        } else {
            errors.sort_by_key(|e| e.span.start);
            Err(errors)
        }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template uses `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var { var: v, .. } if *v == var))
    }

    /// The relative path of one image.
    pub fn render(&self, v: &Vars<'_>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var { var, width } => {
                    let num = |n: u64| format!("{n:0width$}", width = *width);
                    let s = match var {
                        Var::Seed => num(v.seed),
                        Var::Index => num(v.index as u64),
                        Var::Width => num(v.width as u64),
                        Var::Height => num(v.height as u64),
                        Var::Steps => num(v.steps as u64),
                        Var::Job => v.job.to_string(),
                        Var::Pipeline => v.pipeline.to_string(),
                        Var::Sampler => v.sampler.to_string(),
                        Var::Scheduler => v.scheduler.to_string(),
                    };
                    out.push_str(&s);
                }
            }
        }
        out
    }

    /// The template with the job's constant placeholders filled in and the two that change
    /// from image to image (`{seed}`, `{index}`) left as tokens: what the collision check
    /// reasons about (`manifest::validate::collide`).
    pub(crate) fn shape(&self, v: &Vars<'_>) -> Vec<Tok> {
        let mut out = Vec::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.extend(s.chars().map(Tok::Char)),
                Part::Var {
                    var: Var::Seed,
                    width,
                } => out.push(Tok::Seed(*width)),
                Part::Var {
                    var: Var::Index,
                    width,
                } => out.push(Tok::Index(*width)),
                Part::Var { var, width } => {
                    let one = OutputTemplate {
                        text: String::new(),
                        parts: vec![Part::Var {
                            var: *var,
                            width: *width,
                        }],
                    };
                    out.extend(one.render(v).chars().map(Tok::Char));
                }
            }
        }
        out
    }

    /// The file ending, lowercase, one of [`EXTENSIONS`].
    pub fn extension(&self) -> &'static str {
        let lower = self.text.to_ascii_lowercase();
        EXTENSIONS
            .iter()
            .find(|e| lower.ends_with(&format!(".{e}")))
            .copied()
            .unwrap_or("png")
    }

    /// The template with `-{seed}` inserted before its extension (for help texts).
    pub fn with_seed(&self) -> String {
        match self.text.rfind('.') {
            Some(dot) => format!("{}-{{seed}}{}", &self.text[..dot], &self.text[dot..]),
            None => format!("{}-{{seed}}", self.text),
        }
    }
}

/// The file endings an output template may have: `png` (an image, or an animated PNG for a
/// video), `apng` (an animated PNG) and `mp4` (H.264 through ffmpeg); which ones a job may
/// use depends on its family (`manifest::validate`).
pub const EXTENSIONS: [&str; 3] = ["png", "apng", "mp4"];

/// Absolute paths, `\`, `..` that climbs out of the root, and the file ending.
fn check_path(text: &str, parts: &[Part], errors: &mut Vec<TemplateError>) {
    let mut err = |span: Range<usize>, message: &str, help: &str| {
        errors.push(TemplateError {
            span,
            message: message.into(),
            help: help.into(),
        });
    };
    if text.trim().is_empty() {
        err(
            0..text.len(),
            "empty output path",
            "write a path ending in `.png`, like `out/{job}-{seed}.png`",
        );
        return;
    }
    let drive =
        text.len() >= 2 && text.as_bytes()[1] == b':' && text.as_bytes()[0].is_ascii_alphabetic();
    if text.starts_with('/') || drive {
        err(
            0..if drive { 2 } else { 1 },
            "absolute output path",
            "outputs are relative to `[settings].output_root`; set `output_root` to write elsewhere",
        );
    }
    if let Some(i) = text.find('\\') {
        err(
            i..i + 1,
            "`\\` in an output path",
            "use `/` to separate folders",
        );
    }
    let mut depth: i64 = 0;
    let mut start = 0;
    for seg in text.split('/') {
        match seg {
            ".." => {
                depth -= 1;
                if depth < 0 {
                    err(
                        start..start + 2,
                        "output path leaves the output root",
                        "outputs stay inside `[settings].output_root`; change `output_root` to write elsewhere",
                    );
                    break;
                }
            }
            "" | "." => {}
            _ => depth += 1,
        }
        start += seg.len() + 1;
    }
    let lower = text.to_ascii_lowercase();
    let ext = EXTENSIONS.iter().find(|e| {
        let dotted = format!(".{e}");
        matches!(parts.last(), Some(Part::Lit(s)) if s.to_ascii_lowercase().ends_with(&dotted))
            && !lower.ends_with(&format!("/{dotted}"))
            && lower != dotted
    });
    if ext.is_none() {
        let end = text.len();
        let at = text
            .rfind('.')
            .filter(|&d| !text[d..].contains('/'))
            .unwrap_or(end);
        err(
            at..end,
            "output path must end in `.png`, `.apng` or `.mp4`",
            "end the template with a file name and `.png` (images; animated PNG for videos), `.apng` or `.mp4` (videos), like `out/{job}-{seed}.png`",
        );
    }
}

impl fmt::Display for OutputTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for OutputTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            seed: 42,
            index: 3,
            job: "fox",
            pipeline: "dev",
            width: 1024,
            height: 768,
            steps: 20,
            sampler: "euler",
            scheduler: "simple",
        }
    }

    #[test]
    fn renders() {
        let cases = [
            ("out/{job}-{seed}.png", "out/fox-42.png"),
            (
                "{pipeline}/{index:03}_{width}x{height}.png",
                "dev/003_1024x768.png",
            ),
            ("{{literal}}-{seed:05}.PNG", "{literal}-00042.PNG"),
            (
                "a/../b/{sampler}-{scheduler}-{steps}.png",
                "a/../b/euler-simple-20.png",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(
                OutputTemplate::parse(t).unwrap().render(&vars()),
                want,
                "{t}"
            );
        }
    }

    #[test]
    fn rejects() {
        let msg = |t: &str| {
            OutputTemplate::parse(t)
                .unwrap_err()
                .into_iter()
                .map(|e| format!("{}@{}..{}", e.message, e.span.start, e.span.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(msg("out/{sed}.png"), ["unknown placeholder `{sed}`@4..9"]);
        assert_eq!(msg("out/{seed.png"), ["unclosed `{`@4..13"]);
        assert_eq!(msg("out/seed}.png"), ["unmatched `}`@8..9"]);
        assert_eq!(msg("/tmp/{seed}.png"), ["absolute output path@0..1"]);
        assert_eq!(msg("C:/x/{seed}.png"), ["absolute output path@0..2"]);
        assert_eq!(
            msg("a/../../x.png"),
            ["output path leaves the output root@5..7"]
        );
        assert_eq!(
            msg("out/{seed}.jpg"),
            ["output path must end in `.png`, `.apng` or `.mp4`@10..14"]
        );
        assert_eq!(
            msg("out/{seed}"),
            ["output path must end in `.png`, `.apng` or `.mp4`@10..10"]
        );
        for ok in ["out/{seed}.mp4", "out/{seed}.APNG"] {
            assert!(OutputTemplate::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            OutputTemplate::parse("out/{seed}.MP4").unwrap().extension(),
            "mp4"
        );
        assert_eq!(msg("out/.mp4").len(), 1);
        assert_eq!(msg("{}.png"), ["empty placeholder `{}`@0..2"]);
        assert_eq!(
            msg("{job:03}.png"),
            ["`{job}` is not a number and cannot be padded@0..8"]
        );
        assert_eq!(msg("{seed:5}.png"), ["bad format `:5` in `{seed}`@0..8"]);
        assert_eq!(msg(""), ["empty output path@0..0"]);
        assert_eq!(msg("out\\x.png"), ["`\\` in an output path@3..4"]);
        let e = OutputTemplate::parse("out/{sed}.png").unwrap_err();
        assert!(
            e[0].help.starts_with("did you mean `{seed}`?"),
            "{}",
            e[0].help
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,30}") {
            if let Err(errs) = OutputTemplate::parse(&s) {
                for e in errs {
                    proptest::prop_assert!(s.get(e.span.clone()).is_some(), "{:?} in {:?}", e.span, s);
                }
            }
        }
    }
}
