//! The parser of allocation strings, and its errors.
//!
//! One pass splits the string into `;`-separated entries and each entry at its first `,`,
//! keeping byte offsets; each value is classified by its own syntax (size, percentage,
//! fraction, `*`); then whole-string rules run (one mode, one wildcard, no duplicate device,
//! mode-specific limits). Every problem found is reported, each with the byte range of the
//! offending part, a message and a help line that says what would be valid.

use std::fmt;
use std::ops::Range;

use super::{Allocation, Entry, EntrySpan, ExpertAllocation, Mode, Value};
use crate::device::{DeviceError, DeviceName};
use crate::units::{ByteSize, SizeErrorKind, UNIT_HELP};

/// Parses an allocation string, stopping at the first problem (in string order).
pub fn parse(s: &str) -> Result<Allocation, AllocError> {
    parse_all(s).map_err(|mut e| e.remove(0))
}

/// Parses an allocation string, reporting every problem (sorted by position; never empty).
pub fn parse_all(s: &str) -> Result<Allocation, Vec<AllocError>> {
    let t = s.trim();
    if t.is_empty() {
        return Err(vec![AllocError::new(AllocErrorKind::Empty, 0..s.len())]);
    }
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Allocation::Auto);
    }
    if let Some(i) = s.find('#') {
        return Err(vec![AllocError::new(
            AllocErrorKind::DisTorchSuffix,
            i..s.trim_end().len(),
        )]);
    }
    let mut errors = Vec::new();
    let result = if s.contains('=') {
        parse_virtual(s, &mut errors)
    } else {
        parse_expert(s, &mut errors).map(Allocation::Expert)
    };
    match result {
        Some(a) if errors.is_empty() => Ok(a),
        _ => {
            errors.sort_by_key(|e| (e.span.start, e.span.end));
            Err(errors)
        }
    }
}

/// One problem in an allocation string. `span` is a byte range of the string (may be empty at
/// its end); `related` points at an earlier part it conflicts with.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocError {
    pub kind: AllocErrorKind,
    pub span: Range<usize>,
    pub related: Option<(Range<usize>, String)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocErrorKind {
    #[error("empty allocation")]
    Empty,
    #[error("`#…` is DisTorch's internal suffix, not part of an allocation")]
    DisTorchSuffix,
    #[error("empty entry")]
    EmptyEntry,
    #[error("entry `{text}` has no value")]
    MissingComma { text: String, device_like: bool },
    #[error("`,` inside a value: entries are separated by `;`")]
    CommaInValue { fixed: String },
    #[error("nothing after `{what}`")]
    EmptyValue { what: String },
    #[error("{}", device_message(.0))]
    Device(DeviceError),
    #[error("{}", size_message(.0))]
    Size(SizeErrorKind),
    #[error("`{0}` is not a valid value")]
    BadValue(String),
    #[error("negative value `{0}`")]
    Negative(String),
    #[error("`{0}` is not a number")]
    NotFinite(String),
    #[error("`{0}` is more than 100%")]
    PercentOver100(String),
    #[error("fraction `{0}` is more than the device's whole memory")]
    FractionOver1(String),
    #[error("`*` after {}", .mode.noun())]
    ValueThenWildcard { mode: Mode },
    #[error("`{this}` is {} but `{first}` is {}: one allocation uses one kind of value", .this_mode.noun(), .first_mode.noun())]
    MixedModes {
        this: String,
        this_mode: Mode,
        first: String,
        first_mode: Mode,
    },
    #[error("`{device}` has more than one entry")]
    DuplicateDevice { device: DeviceName },
    #[error("more than one `*`")]
    MultipleWildcards,
    #[error("`*` cannot be used with fractions")]
    WildcardInFraction,
    #[error("`disk` cannot take a fraction of its memory")]
    DiskInFraction,
    #[error(
        "percentages add up to {sum}%, more than the 100% that `{wildcard},*` takes the rest of"
    )]
    PercentSumOver100 { sum: f64, wildcard: DeviceName },
    #[error("every percentage is 0%")]
    PercentSumZero,
    #[error("unknown key `{key}` in a virtual VRAM allocation")]
    UnknownVirtualKey {
        key: String,
        suggestion: Option<&'static str>,
    },
    #[error("`{0}` is given twice")]
    DuplicateVirtualKey(String),
    #[error("`{0}` is not `key=value`")]
    BadVirtualEntry(String),
    #[error("`virtual_vram=SIZE` is missing")]
    MissingVirtualVram,
}

const VALUES_HELP: &str = "a value is a size (`8gb`), a percentage (`25%`), a fraction of the \
device's memory (`0.5`) or `*` (this device takes the remainder)";
const VIRTUAL_HELP: &str = "the virtual VRAM form is `virtual_vram=SIZE;donor=DEVICE`, like \
`virtual_vram=12gb;donor=cpu` (in a manifest, prefer the `virtual_vram` and `donor` keys)";
pub(crate) const DEVICES_HELP: &str =
    "devices are `cpu`, `cuda:N` (`cuda` means `cuda:0`) and `disk` (weights stay in the memory-mapped file)";

/// A device error as a message without its suggestion (which goes to the help line).
pub(crate) fn device_message(e: &DeviceError) -> String {
    match e {
        DeviceError::Empty => "empty device name".into(),
        DeviceError::Unsupported { name } => {
            format!("`{name}` is not supported: mgpu runs on CPUs and CUDA GPUs")
        }
        DeviceError::BadIndex { name } => format!("`{name}` has a bad device index"),
        DeviceError::Unknown { name, .. } => format!("unknown device `{name}`"),
    }
}

/// The help line for a device error: the suggestion, if any, and what is valid.
pub(crate) fn device_help(e: &DeviceError) -> String {
    match e {
        DeviceError::Unknown {
            suggestion: Some(s),
            ..
        } => format!("did you mean `{s}`? {DEVICES_HELP}"),
        DeviceError::BadIndex { .. } => {
            format!("write `cuda:N` with N a whole number, like `cuda:1`; {DEVICES_HELP}")
        }
        _ => DEVICES_HELP.to_string(),
    }
}

pub(crate) fn size_message(k: &SizeErrorKind) -> String {
    match k {
        SizeErrorKind::Empty => "empty size".into(),
        SizeErrorKind::BadNumber(s) => format!("`{s}` is not a number"),
        SizeErrorKind::Negative(s) => format!("negative size `{s}`"),
        SizeErrorKind::UnknownUnit(u) => format!("unknown unit `{u}`"),
        SizeErrorKind::TooLarge(s) => format!("size `{s}` is too large (more than 2^64 bytes)"),
    }
}

impl AllocErrorKind {
    /// What would be valid, for the `help:` line.
    pub fn help(&self) -> String {
        use AllocErrorKind::*;
        match self {
            Empty => "write `auto`, or `device,value` entries separated by `;`, like `cuda:0,8gb;cpu,*`".into(),
            DisTorchSuffix => "DisTorch builds `expert#compute;virtual_vram_gb;donor` internally; in a manifest \
                the compute device is the `compute` key and virtual VRAM is `virtual_vram = \"4gb\"` with \
                `donor = \"cpu\"`"
                .into(),
            EmptyEntry => "remove the extra `;` or write the missing `device,value` entry".into(),
            MissingComma { text, device_like: true } => {
                format!("each entry is `device,value`; for the device that takes the remainder write `{text},*`")
            }
            MissingComma { .. } => "each entry is `device,value`, like `cuda:0,8gb` or `cpu,*`".into(),
            CommaInValue { fixed } => format!("did you mean `{fixed}`?"),
            EmptyValue { what } if what.ends_with('=') => VIRTUAL_HELP.into(),
            EmptyValue { .. } => VALUES_HELP.into(),
            Device(e) => device_help(e),
            Size(SizeErrorKind::UnknownUnit(_)) => {
                format!("units are {UNIT_HELP}")
            }
            Size(_) => format!("write a number with an optional unit: {UNIT_HELP}"),
            BadValue(_) => VALUES_HELP.into(),
            Negative(_) => "values must be zero or more".into(),
            NotFinite(_) => VALUES_HELP.into(),
            PercentOver100(_) => "a percentage is a share of the model, from 0% to 100%".into(),
            FractionOver1(v) => format!(
                "a fraction of a device's total memory is between 0 and 1 (`0.5` is half of it); for a size write a unit, like `{v}gb`"
            ),
            ValueThenWildcard { mode: Mode::Ratio } => {
                "write `cpu,*` for the device that takes what is left of 100%; a value then `*` (`cpu,4gb*`) works only with sizes".into()
            }
            ValueThenWildcard { .. } => {
                "a value then `*` (`cpu,4gb*`) works only with sizes; fractions have no remainder to take".into()
            }
            MixedModes { this_mode, first_mode, this, .. } => {
                let lone_int = if *this_mode == Mode::Bytes
                    && *first_mode == Mode::Fraction
                    && this.bytes().all(|b| b.is_ascii_digit())
                {
                    format!(" (`{this}` without a unit is a byte count: write `{this}.0` for a fraction)")
                } else {
                    String::new()
                };
                format!(
                    "write every value as a size (`cuda:0,8gb;cpu,*`), every value as a percentage (`cuda:0,25%;cpu,75%`) \
                     or every value as a fraction (`cuda:0,0.5;cpu,0.25`){lone_int}"
                )
            }
            DuplicateDevice { .. } => "give each device one entry (values are not added up)".into(),
            MultipleWildcards => "only one device can take the remainder; give the others a value".into(),
            WildcardInFraction => "a fraction is a share of each device's own memory, so there is no remainder to \
                take; use sizes (`cuda:0,8gb;cpu,*`) or percentages (`cuda:0,25%;cpu,*`)"
                .into(),
            DiskInFraction => "fractions are of a device's total memory and disk has none; use sizes instead, \
                like `cuda:0,8gb;disk,*`"
                .into(),
            PercentSumOver100 { .. } => "with a `*` device the other percentages must add up to at most 100%; \
                without one they are shares normalised by their sum (`cuda:0,8%;cpu,4%` is 2:1)"
                .into(),
            PercentSumZero => "give at least one device a share above 0%".into(),
            UnknownVirtualKey { suggestion: Some(s), .. } => format!("did you mean `{s}`? {VIRTUAL_HELP}"),
            UnknownVirtualKey { .. } | DuplicateVirtualKey(_) | BadVirtualEntry(_) | MissingVirtualVram => {
                VIRTUAL_HELP.into()
            }
        }
    }
}

impl AllocError {
    fn new(kind: AllocErrorKind, span: Range<usize>) -> Self {
        AllocError {
            kind,
            span,
            related: None,
        }
    }

    fn related(mut self, span: Range<usize>, message: impl Into<String>) -> Self {
        self.related = Some((span, message.into()));
        self
    }

    pub fn help(&self) -> String {
        self.kind.help()
    }

    /// The error for people without a file around it: the message, the string with `^` under
    /// the bad part (and `-` under a related part), the help line.
    pub fn render(&self, input: &str) -> String {
        let line = input.replace(['\t', '\n', '\r'], " ");
        let col = |byte: usize| {
            input
                .get(..byte.min(input.len()))
                .map_or(0, |p| p.chars().count())
        };
        let width = |r: &Range<usize>| input.get(r.clone()).map_or(0, |p| p.chars().count()).max(1);
        let mut marks: Vec<char> = vec![' '; line.chars().count() + 1];
        let mut put = |r: &Range<usize>, c: char| {
            let start = col(r.start);
            for i in start..start + width(r) {
                if i >= marks.len() {
                    marks.resize(i + 1, ' ');
                }
                marks[i] = c;
            }
        };
        if let Some((r, _)) = &self.related {
            put(r, '-');
        }
        put(&self.span, '^');
        let marks: String = marks.into_iter().collect::<String>().trim_end().to_string();
        let mut out = format!("{}\n    {line}\n    {marks}", self.kind);
        if let Some((_, msg)) = &self.related {
            out.push_str(&format!("\n    note: {msg}"));
        }
        out.push_str(&format!("\n    help: {}", self.help()));
        out
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for AllocError {}

/// The error of [`Allocation`]'s `FromStr`: every problem, rendered with carets by `Display`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseAllocationError {
    pub input: String,
    pub errors: Vec<AllocError>,
}

impl fmt::Display for ParseAllocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid allocation `{}`:", self.input)?;
        for e in &self.errors {
            write!(f, "\n{}", e.render(&self.input))?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseAllocationError {}

// ---------------------------------------------------------------------------------------------

/// `s` split at `sep`, each piece with its byte offset.
fn split_offsets(s: &str, sep: char) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == sep {
            out.push((start, &s[start..i]));
            start = i + c.len_utf8();
        }
    }
    out.push((start, &s[start..]));
    out
}

/// `text` trimmed, with the byte offset of the trimmed part (`off` is `text`'s own offset).
fn trim_at(text: &str, off: usize) -> (&str, usize) {
    let lead = text.len() - text.trim_start().len();
    (text.trim(), off + lead)
}

/// The non-empty pieces of a `;`-separated list; empty pieces are errors, except one empty
/// piece at the very end (a trailing `;`, accepted).
fn pieces<'a>(s: &'a str, errors: &mut Vec<AllocError>) -> Vec<(&'a str, usize)> {
    let raw = split_offsets(s, ';');
    let n = raw.len();
    let mut out = Vec::new();
    for (k, &(off, piece)) in raw.iter().enumerate() {
        let (t, toff) = trim_at(piece, off);
        if !t.is_empty() {
            out.push((t, toff));
        } else if k + 1 < n {
            // Point at the `;` that ends the empty piece. (An empty last piece is a trailing
            // `;`, accepted; in `a;;` the middle piece was reported here.)
            let semi = off + piece.len();
            errors.push(AllocError::new(AllocErrorKind::EmptyEntry, semi..semi + 1));
        }
    }
    out
}

fn parse_expert(s: &str, errors: &mut Vec<AllocError>) -> Option<ExpertAllocation> {
    let mut entries = Vec::new();
    let mut failed = false;
    for (text, off) in pieces(s, errors) {
        match parse_entry(s, text, off, errors) {
            Some(e) => entries.push(e),
            None => failed = true,
        }
    }
    let mode = check_whole(s, &entries, errors);
    (!failed).then_some(ExpertAllocation { mode, entries })
}

/// Parses one trimmed `device,value` entry at byte `off` of `s`.
fn parse_entry(s: &str, text: &str, off: usize, errors: &mut Vec<AllocError>) -> Option<Entry> {
    let entry_span = off..off + text.len();
    let Some(comma) = text.find(',') else {
        let device_like = DeviceName::parse(text).is_ok();
        errors.push(AllocError::new(
            AllocErrorKind::MissingComma {
                text: text.to_string(),
                device_like,
            },
            entry_span,
        ));
        return None;
    };
    let (dev, dev_off) = trim_at(&text[..comma], off);
    let (val, val_off) = trim_at(&text[comma + 1..], off + comma + 1);
    let comma_span = off + comma..off + comma + 1;
    let device = if dev.is_empty() {
        errors.push(AllocError::new(
            AllocErrorKind::Device(DeviceError::Empty),
            comma_span.clone(),
        ));
        None
    } else {
        DeviceName::parse(dev)
            .map_err(|e| {
                errors.push(AllocError::new(
                    AllocErrorKind::Device(e),
                    dev_off..dev_off + dev.len(),
                ))
            })
            .ok()
    };
    let value = if let Some(c2) = val.find(',') {
        let at = val_off + c2;
        let mut fixed = s.trim().to_string();
        let lead = s.len() - s.trim_start().len();
        fixed.replace_range(at - lead..at - lead + 1, ";");
        errors.push(AllocError::new(
            AllocErrorKind::CommaInValue { fixed },
            at..at + 1,
        ));
        None
    } else if val.is_empty() {
        errors.push(AllocError::new(
            AllocErrorKind::EmptyValue {
                what: format!("{dev},"),
            },
            comma_span,
        ));
        None
    } else {
        classify(val, val_off).map_err(|e| errors.push(e)).ok()
    };
    let (value, wildcard) = value?;
    Some(Entry {
        device: device?,
        value,
        wildcard,
        span: EntrySpan {
            entry: entry_span,
            device: dev_off..dev_off + dev.len(),
            value: val_off..val_off + val.len(),
        },
    })
}

/// `+?(digits[.digits]|.digits)` as f64.
fn decimal(s: &str) -> Option<f64> {
    let d = s.strip_prefix('+').unwrap_or(s);
    let ok = !d.is_empty()
        && d.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && d.matches('.').count() <= 1
        && d != ".";
    ok.then(|| d.parse().ok()).flatten()
}

fn is_not_finite(s: &str) -> bool {
    let l = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
    matches!(l.as_str(), "nan" | "inf" | "infinity")
}

/// Classifies one trimmed value at byte `off`: `(value, wildcard)`.
fn classify(v: &str, off: usize) -> Result<(Option<Value>, bool), AllocError> {
    let span = off..off + v.len();
    let err = |k| Err(AllocError::new(k, span.clone()));
    if v == "*" {
        return Ok((None, true));
    }
    if let Some(inner) = v.strip_suffix('*') {
        let star = off + v.len() - 1;
        let inner = inner.trim_end();
        if inner.ends_with('*') {
            return err(AllocErrorKind::BadValue(v.to_string()));
        }
        let (value, _) = classify(inner, off)?;
        return match value.map(Value::mode) {
            Some(Mode::Bytes) | None => Ok((value, true)),
            Some(mode) => Err(AllocError::new(
                AllocErrorKind::ValueThenWildcard { mode },
                star..star + 1,
            )),
        };
    }
    if is_not_finite(v.trim_end_matches('%').trim_end()) {
        return err(AllocErrorKind::NotFinite(v.to_string()));
    }
    if v.starts_with('-') {
        return err(AllocErrorKind::Negative(v.to_string()));
    }
    if let Some(num) = v.strip_suffix('%') {
        let num = num.trim_end();
        return match decimal(num) {
            Some(p) if p > 100.0 => err(AllocErrorKind::PercentOver100(v.to_string())),
            Some(p) => Ok((Some(Value::Percent(p)), false)),
            None => err(AllocErrorKind::BadValue(v.to_string())),
        };
    }
    let digits = v.strip_prefix('+').unwrap_or(v);
    let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if integer || v.bytes().any(|b| b.is_ascii_alphabetic()) {
        return match ByteSize::parse(v) {
            Ok(b) => Ok((Some(Value::Bytes(b)), false)),
            Err(e) => {
                let start = off + e.offset;
                Err(AllocError::new(
                    AllocErrorKind::Size(e.kind),
                    start..start + e.len,
                ))
            }
        };
    }
    match decimal(v) {
        Some(f) if f > 1.0 => err(AllocErrorKind::FractionOver1(v.to_string())),
        Some(f) => Ok((Some(Value::Fraction(f)), false)),
        None => err(AllocErrorKind::BadValue(v.to_string())),
    }
}

/// Rules over all entries; returns the mode (of the first value; bytes when there is none).
fn check_whole(s: &str, entries: &[Entry], errors: &mut Vec<AllocError>) -> Mode {
    let text = |r: &Range<usize>| s[r.clone()].to_string();
    // One entry per device.
    for (i, e) in entries.iter().enumerate() {
        if let Some(first) = entries[..i].iter().find(|f| f.device == e.device) {
            errors.push(
                AllocError::new(
                    AllocErrorKind::DuplicateDevice { device: e.device },
                    e.span.device.clone(),
                )
                .related(
                    first.span.device.clone(),
                    format!("first entry for `{}`", e.device),
                ),
            );
        }
    }
    // One mode.
    let first = entries.iter().find(|e| e.value.is_some());
    let mode = first.and_then(|e| e.value).map_or(Mode::Bytes, Value::mode);
    if let Some(first) = first {
        for e in entries {
            let Some(v) = e.value else { continue };
            if v.mode() != mode {
                errors.push(
                    AllocError::new(
                        AllocErrorKind::MixedModes {
                            this: text(&e.span.value),
                            this_mode: v.mode(),
                            first: text(&first.span.value),
                            first_mode: mode,
                        },
                        e.span.value.clone(),
                    )
                    .related(
                        first.span.value.clone(),
                        format!("the first value is {}", mode.noun()),
                    ),
                );
            }
        }
    }
    // One wildcard.
    let wild: Vec<&Entry> = entries.iter().filter(|e| e.wildcard).collect();
    for e in wild.iter().skip(1) {
        errors.push(
            AllocError::new(AllocErrorKind::MultipleWildcards, e.span.value.clone())
                .related(wild[0].span.value.clone(), "first `*`"),
        );
    }
    match mode {
        Mode::Fraction => {
            for e in entries {
                if e.wildcard {
                    let star = e.span.value.end - 1;
                    errors.push(AllocError::new(
                        AllocErrorKind::WildcardInFraction,
                        star..star + 1,
                    ));
                }
                if e.device == DeviceName::Disk {
                    errors.push(AllocError::new(
                        AllocErrorKind::DiskInFraction,
                        e.span.device.clone(),
                    ));
                }
            }
        }
        Mode::Ratio => {
            let sum: f64 = entries
                .iter()
                .filter_map(|e| match e.value {
                    Some(Value::Percent(p)) => Some(p),
                    _ => None,
                })
                .sum();
            if let Some(w) = wild.first() {
                if sum > 100.0 + 1e-9 {
                    errors.push(AllocError::new(
                        AllocErrorKind::PercentSumOver100 {
                            sum: (sum * 1e6).round() / 1e6,
                            wildcard: w.device,
                        },
                        w.span.entry.clone(),
                    ));
                }
            } else if sum <= 0.0 {
                let lead = s.len() - s.trim_start().len();
                errors.push(AllocError::new(
                    AllocErrorKind::PercentSumZero,
                    lead..s.trim_end().len(),
                ));
            }
        }
        Mode::Bytes => {}
    }
    mode
}

const VIRTUAL_KEYS: &[&str] = &["virtual_vram", "donor"];

fn parse_virtual(s: &str, errors: &mut Vec<AllocError>) -> Option<Allocation> {
    let mut bytes: Option<(ByteSize, Range<usize>)> = None;
    let mut donor: Option<(DeviceName, Range<usize>)> = None;
    let mut failed = false;
    for (text, off) in pieces(s, errors) {
        let span = off..off + text.len();
        let Some(eq) = text.find('=') else {
            errors.push(AllocError::new(
                AllocErrorKind::BadVirtualEntry(text.to_string()),
                span,
            ));
            failed = true;
            continue;
        };
        let (key, key_off) = trim_at(&text[..eq], off);
        let (val, val_off) = trim_at(&text[eq + 1..], off + eq + 1);
        let key_span = key_off..key_off + key.len();
        let val_span = val_off..val_off + val.len();
        if val.is_empty() {
            let at = off + eq;
            errors.push(AllocError::new(
                AllocErrorKind::EmptyValue {
                    what: format!("{key}="),
                },
                at..at + 1,
            ));
            failed = true;
            continue;
        }
        let lower = key.to_ascii_lowercase();
        let seen = match lower.as_str() {
            "virtual_vram" => bytes.as_ref().map(|b| b.1.clone()),
            "donor" => donor.as_ref().map(|d| d.1.clone()),
            _ => None,
        };
        if let Some(first) = seen {
            errors.push(
                AllocError::new(AllocErrorKind::DuplicateVirtualKey(lower.clone()), key_span)
                    .related(first, "first given here"),
            );
            failed = true;
            continue;
        }
        match lower.as_str() {
            "virtual_vram" => match ByteSize::parse(val) {
                Ok(b) => bytes = Some((b, key_span)),
                Err(e) => {
                    let start = val_off + e.offset;
                    errors.push(AllocError::new(
                        AllocErrorKind::Size(e.kind),
                        start..start + e.len,
                    ));
                    failed = true;
                }
            },
            "donor" => match DeviceName::parse(val) {
                Ok(d) => donor = Some((d, key_span)),
                Err(e) => {
                    errors.push(AllocError::new(AllocErrorKind::Device(e), val_span));
                    failed = true;
                }
            },
            _ => {
                let suggestion = VIRTUAL_KEYS
                    .iter()
                    .map(|k| (strsim::damerau_levenshtein(&lower, k), *k))
                    .filter(|&(d, _)| d <= 3)
                    .min()
                    .map(|(_, k)| k);
                errors.push(AllocError::new(
                    AllocErrorKind::UnknownVirtualKey {
                        key: key.to_string(),
                        suggestion,
                    },
                    key_span,
                ));
                failed = true;
            }
        }
    }
    let Some((bytes, _)) = bytes else {
        if !failed {
            let lead = s.len() - s.trim_start().len();
            errors.push(AllocError::new(
                AllocErrorKind::MissingVirtualVram,
                lead..s.trim_end().len(),
            ));
        }
        return None;
    };
    if failed {
        return None;
    }
    Some(Allocation::VirtualVram {
        bytes,
        donor: donor.map_or(DeviceName::Cpu, |d| d.0),
    })
}
