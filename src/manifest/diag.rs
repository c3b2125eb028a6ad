//! Diagnostics: errors and warnings that point into a source file, rendered cargo-style.
//!
//! ```text
//! error: unknown key `famly` in `models.flux`
//!   --> manifests/flux.toml:5:1
//!    |
//!  5 | famly = "flux"
//!    | ^^^^^ unknown key
//!    |
//!    = help: did you mean `family`?
//! ```
//!
//! A [`Diagnostic`] carries its [`SourceFile`] (shared), so diagnostics from several files
//! (a manifest, a hardware file) can live in one [`Diagnostics`] list. Every stage that reads a
//! user's file can use these types; later stages point into the manifest through
//! [`crate::manifest::Manifest::diagnostic_at`].

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// A file's text and the name it is shown under.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (shown in `-->` lines).
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<Self> {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Arc::new(SourceFile {
            path: path.into(),
            text,
            line_starts,
        })
    }

    /// 0-based line index of byte `pos` (clamped to the text).
    fn line_index(&self, pos: usize) -> usize {
        let pos = pos.min(self.text.len());
        self.line_starts.partition_point(|&s| s <= pos) - 1
    }

    /// The text of 0-based line `i`, without its line ending.
    fn line(&self, i: usize) -> &str {
        let start = self.line_starts[i];
        let end = self
            .line_starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }

    /// 1-based line and column (in characters) of byte `pos`.
    pub fn line_col(&self, pos: usize) -> (usize, usize) {
        let i = self.line_index(pos);
        let start = self.line_starts[i];
        let pos = floor_char(&self.text, pos.min(self.text.len()).max(start));
        (i + 1, self.text[start..pos].chars().count() + 1)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// A span of the diagnostic's source with a short text shown next to its underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Range<usize>,
    pub text: String,
}

/// One error or warning.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The file the labels point into; `None` for problems with no place (an unreadable file).
    pub source: Option<Arc<SourceFile>>,
    /// Underlined with `^`.
    pub primary: Option<Label>,
    /// Underlined with `-` (related places: "first defined here").
    pub secondary: Vec<Label>,
    /// What would be valid.
    pub help: Option<String>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            source: None,
            primary: None,
            secondary: Vec::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    /// Points the diagnostic at `span` of `source`.
    pub fn at(
        mut self,
        source: &Arc<SourceFile>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        self.source = Some(source.clone());
        self.primary = Some(Label {
            span,
            text: label.into(),
        });
        self
    }

    /// Adds a related place in the same source.
    pub fn with_secondary(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            text: label.into(),
        });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` of the primary label, if any.
    pub fn location(&self) -> Option<String> {
        let (src, l) = (self.source.as_ref()?, self.primary.as_ref()?);
        let (line, col) = src.line_col(l.span.start);
        Some(format!("{}:{line}:{col}", src.path.display()))
    }

    fn sort_key(&self) -> (Option<PathBuf>, usize, usize) {
        (
            self.source.as_ref().map(|s| s.path.clone()),
            self.primary.as_ref().map_or(usize::MAX, |l| l.span.start),
            self.primary.as_ref().map_or(usize::MAX, |l| l.span.end),
        )
    }

    /// The cargo-style text, with ANSI colors when `color`.
    pub fn render(&self, color: bool) -> String {
        let st = Style { color };
        let mut out = String::new();
        let (word, sev_color) = match self.severity {
            Severity::Error => ("error", RED),
            Severity::Warning => ("warning", YELLOW),
        };
        out.push_str(&format!(
            "{}{}\n",
            st.paint(sev_color, word),
            st.paint(BOLD, &format!(": {}", self.message))
        ));
        let mut gutter = 0;
        if let (Some(src), Some(primary)) = (&self.source, &self.primary) {
            let mut labels: Vec<(&Label, bool)> = vec![(primary, true)];
            labels.extend(self.secondary.iter().map(|l| (l, false)));
            labels.sort_by_key(|(l, _)| (src.line_index(l.span.start), l.span.start));
            let last_line = labels
                .iter()
                .map(|(l, _)| src.line_index(l.span.start))
                .max()
                .unwrap_or(0);
            gutter = (last_line + 1).to_string().len();
            let pad = " ".repeat(gutter);
            let bar = st.paint(BLUE, "|");
            out.push_str(&format!(
                "{pad}{} {}:{}\n",
                st.paint(BLUE, "-->"),
                src.path.display(),
                {
                    let (l, c) = src.line_col(primary.span.start);
                    format!("{l}:{c}")
                }
            ));
            out.push_str(&format!("{pad} {bar}\n"));
            let mut prev_line: Option<usize> = None;
            // The part of the current line shown: (start, end) bytes, and whether cut.
            let mut shown = (0, 0);
            for (label, is_primary) in labels {
                let li = src.line_index(label.span.start);
                let line = src.line(li);
                let line_start = src.line_starts[li];
                if prev_line != Some(li) {
                    shown = window(line, label.span.start.saturating_sub(line_start));
                    if let Some(p) = prev_line {
                        if li > p + 1 {
                            out.push_str(&format!("{}\n", st.paint(BLUE, "...")));
                        }
                    }
                    let num = format!("{:>gutter$}", li + 1);
                    out.push_str(&format!(
                        "{} {bar} {}{}{}\n",
                        st.paint(BLUE, &num),
                        if shown.0 > 0 { "…" } else { "" },
                        printable(&line[shown.0..shown.1]),
                        if shown.1 < line.len() { "…" } else { "" },
                    ));
                    prev_line = Some(li);
                }
                let clamp = |pos: usize| {
                    floor_char(line, pos.saturating_sub(line_start).clamp(shown.0, shown.1))
                };
                let start = clamp(label.span.start);
                let end = clamp(label.span.end);
                let col = display_width(&line[shown.0..start]) + usize::from(shown.0 > 0);
                let width = display_width(&line[start..end.max(start)]).max(1);
                let (mark, c) = if is_primary {
                    ('^', sev_color)
                } else {
                    ('-', BLUE)
                };
                let marks: String = std::iter::repeat_n(mark, width).collect();
                let text = if label.text.is_empty() {
                    String::new()
                } else {
                    format!(" {}", label.text)
                };
                out.push_str(&format!(
                    "{pad} {bar} {}{}\n",
                    " ".repeat(col),
                    st.paint(c, &format!("{marks}{text}"))
                ));
            }
        } else if let Some(src) = &self.source {
            out.push_str(&format!(
                " {} {}\n",
                st.paint(BLUE, "-->"),
                src.path.display()
            ));
        }
        let pad = " ".repeat(gutter);
        if !self.notes.is_empty() || self.help.is_some() {
            if self.primary.is_some() {
                out.push_str(&format!("{pad} {}\n", st.paint(BLUE, "|")));
            }
            for n in &self.notes {
                out.push_str(&format!(
                    "{pad} {} {}: {n}\n",
                    st.paint(BLUE, "="),
                    st.paint(BOLD, "note")
                ));
            }
            if let Some(h) = &self.help {
                out.push_str(&format!(
                    "{pad} {} {}: {h}\n",
                    st.paint(BLUE, "="),
                    st.paint(BOLD, "help")
                ));
            }
        }
        out
    }
}

/// Source lines longer than this many characters are shown cut around the label.
const MAX_SHOWN_CHARS: usize = 120;
/// How many characters before the label a cut line keeps.
const SHOWN_BEFORE: usize = 40;
/// The most diagnostics [`Diagnostics::render`] prints; the rest are counted.
pub const MAX_RENDERED: usize = 50;

/// The byte range of `line` to show for a label at byte `at`: all of a short line, else
/// [`MAX_SHOWN_CHARS`] characters from [`SHOWN_BEFORE`] before the label (so one 20 000-
/// character line reported 20 000 times does not print 400 million characters).
fn window(line: &str, at: usize) -> (usize, usize) {
    if line.len() <= MAX_SHOWN_CHARS || line.chars().count() <= MAX_SHOWN_CHARS {
        return (0, line.len());
    }
    let at = floor_char(line, at.min(line.len()));
    let before: Vec<usize> = line[..at]
        .char_indices()
        .rev()
        .take(SHOWN_BEFORE)
        .map(|(i, _)| i)
        .collect();
    let start = before.last().copied().unwrap_or(at);
    let end = line[start..]
        .char_indices()
        .nth(MAX_SHOWN_CHARS)
        .map_or(line.len(), |(i, _)| start + i);
    (start, end)
}

/// A source line for the terminal: tabs as four spaces, other control characters (a bare
/// `\r`, ESC) as their visible symbols, one column each.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('?')),
            '\x7f' => out.push('\u{2421}'),
            c => out.push(c),
        }
    }
    out
}

fn display_width(s: &str) -> usize {
    s.chars().map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[1;33m";
const BLUE: &str = "\x1b[1;34m";
const BOLD: &str = "\x1b[1m";

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("{code}{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// A list of diagnostics, kept in the order of their place in the file.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics(Vec::new())
    }

    /// A single error with no place (e.g. a file that cannot be read).
    pub fn single(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = Diagnostic>) {
        self.0.extend(other);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.0.len() - self.error_count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Sorts by file, then position (stable: equal places keep their order).
    pub fn sort(&mut self) {
        self.0.sort_by_key(Diagnostic::sort_key);
    }

    /// Every diagnostic, rendered, separated by blank lines; after [`MAX_RENDERED`] of them
    /// the rest are only counted (like cargo, so a file with 20 000 errors prints a page).
    pub fn render(&self, color: bool) -> String {
        let mut out = self
            .0
            .iter()
            .take(MAX_RENDERED)
            .map(|d| d.render(color))
            .collect::<Vec<_>>()
            .join("\n");
        let rest = self.0.len().saturating_sub(MAX_RENDERED);
        if rest > 0 {
            let rest: Diagnostics = self.0[MAX_RENDERED..].iter().cloned().collect();
            out.push_str(&format!(
                "\n... and {} more, not shown (fix the ones above first)\n",
                rest.counts()
            ));
        }
        out
    }

    /// `2 errors, 1 warning` (or `no problems`).
    pub fn counts(&self) -> String {
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        match (self.error_count(), self.warning_count()) {
            (0, 0) => "no problems".into(),
            (e, 0) => plural(e, "error"),
            (0, w) => plural(w, "warning"),
            (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
        }
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Diagnostic> for Diagnostics {
    fn from_iter<I: IntoIterator<Item = Diagnostic>>(iter: I) -> Self {
        Diagnostics(iter.into_iter().collect())
    }
}

/// Plain rendering (no colors), so `Diagnostics` can travel as an error through `anyhow`.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render(false).trim_end())
    }
}

impl std::error::Error for Diagnostics {}

/// The byte range, in the file, of `inner` (a byte range of a string value's *content*), given
/// the span of the whole TOML string value (quotes included). Handles literal and basic
/// strings, single- and multi-line, and escapes; falls back to the whole value span when the
/// text does not look like the string it should be.
pub fn content_span(text: &str, value: Range<usize>, inner: Range<usize>) -> Range<usize> {
    let Some(raw) = text.get(value.clone()) else {
        return value;
    };
    let (delim, literal) = if raw.starts_with("'''") {
        ("'''", true)
    } else if raw.starts_with("\"\"\"") {
        ("\"\"\"", false)
    } else if raw.starts_with('\'') {
        ("'", true)
    } else if raw.starts_with('"') {
        ("\"", false)
    } else {
        return value;
    };
    if raw.len() < 2 * delim.len() || !raw.ends_with(delim) {
        return value;
    }
    let mut start = delim.len();
    if delim.len() == 3 {
        // A newline right after the opening delimiter is not part of the content.
        if raw[start..].starts_with("\r\n") {
            start += 2;
        } else if raw[start..].starts_with('\n') {
            start += 1;
        }
    }
    let body = &raw[start..raw.len() - delim.len()];
    let base = value.start + start;
    // map[d] = offset in `body` of decoded byte d (and one past the end).
    let mut map: Vec<usize> = Vec::with_capacity(body.len() + 1);
    if literal {
        map.extend(0..=body.len());
    } else {
        let b = body.as_bytes();
        let mut r = 0;
        while r < b.len() {
            if b[r] != b'\\' {
                map.push(r);
                r += 1;
                continue;
            }
            let esc = b.get(r + 1).copied();
            let (decoded_len, raw_len) = match esc {
                Some(b'b' | b't' | b'n' | b'f' | b'r' | b'"' | b'\\' | b'e') => (1, 2),
                Some(b'x') => (hex_len(&body[r + 2..], 2), 4),
                Some(b'u') => (hex_len(&body[r + 2..], 4), 6),
                Some(b'U') => (hex_len(&body[r + 2..], 8), 10),
                Some(b' ' | b'\t' | b'\r' | b'\n') if delim.len() == 3 => {
                    // Line-ending backslash: the backslash and all following whitespace vanish.
                    let ws = body[r + 1..].len() - body[r + 1..].trim_start().len();
                    (0, 1 + ws)
                }
                _ => return value,
            };
            if r + raw_len > b.len() {
                return value;
            }
            map.extend(std::iter::repeat_n(r, decoded_len));
            r += raw_len;
        }
        map.push(b.len());
    }
    let at = |d: usize| map.get(d).map(|&r| base + r);
    match (at(inner.start), at(inner.end)) {
        (Some(s), Some(e)) if s <= e => s..e,
        _ => value,
    }
}

/// UTF-8 length of the char written as `n` hex digits at the start of `s` (1 if invalid).
fn hex_len(s: &str, n: usize) -> usize {
    s.get(..n)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .and_then(char::from_u32)
        .map_or(1, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col() {
        let s = SourceFile::new("m.toml", "a = 1\nbé = 2\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        assert_eq!(s.line_col(9), (2, 3));
        assert_eq!(s.line_col(100), (3, 1));
    }

    #[test]
    fn renders_cargo_style() {
        let src = SourceFile::new("m.toml", "[models.flux]\nfamly = \"flux\"\n\n\nfile = 3\n");
        let d = Diagnostic::error("unknown key `famly` in `models.flux`")
            .at(&src, 14..19, "unknown key")
            .with_secondary(31..35, "related")
            .with_help("did you mean `family`?");
        insta::assert_snapshot!(d.render(false), @r#"
        error: unknown key `famly` in `models.flux`
         --> m.toml:2:1
          |
        2 | famly = "flux"
          | ^^^^^ unknown key
        ...
        5 | file = 3
          | ---- related
          |
          = help: did you mean `family`?
        "#);
        assert!(d.render(true).contains("\x1b[1;31merror"));
    }

    #[test]
    fn content_spans() {
        let cases: &[(&str, &str)] = &[
            (r#"a = "cuda:0,8xb""#, "xb"),
            (r#"a = 'cuda:0,8xb'"#, "xb"),
            (r#"a = "c\tuda:0,8xb""#, "xb"),
            (r#"a = "\u00e9:8xb""#, "xb"),
            ("a = \"\"\"\ncuda:0,8xb\"\"\"", "xb"),
            ("a = '''\ncuda:0,8xb'''", "xb"),
        ];
        for (text, want) in cases {
            let value = 4..text.len();
            let toml::Value::String(decoded) = text.parse::<toml::Table>().unwrap()["a"].clone()
            else {
                panic!()
            };
            let i = decoded.find("xb").unwrap();
            let r = content_span(text, value, i..i + 2);
            assert_eq!(&text[r], *want, "{text}");
        }
    }
}
