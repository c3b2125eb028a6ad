//! `FromToml` for leaf values: strings, booleans, numbers, names (families, devices, samplers,
//! …), sizes and allocation strings. Each reports its own problems, pointing inside strings
//! where it can.

use std::ops::Range;

use schemars::JsonSchema;
use serde_spanned::Spanned;
use toml::de::DeValue;

use super::{key_of, Cx, FromToml};
use crate::alloc::{self, Allocation};
use crate::device::DeviceName;
use crate::family::Family;
use crate::manifest::diag::Diagnostic;
use crate::sample::names::NameError;
use crate::sample::{Sampler, Scheduler};
use crate::units::ByteSize;

impl FromToml for String {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                cx.type_error(v, path, Self::EXPECTED);
                None
            }
        }
    }
}

impl FromToml for bool {
    const EXPECTED: &'static str = "`true` or `false`";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                cx.type_error(v, path, Self::EXPECTED);
                None
            }
        }
    }
}

/// An integer value in `0..=max`.
fn unsigned(
    v: &Spanned<DeValue<'_>>,
    cx: &mut Cx,
    path: &str,
    max: u64,
    expected: &str,
) -> Option<u64> {
    match v.get_ref() {
        DeValue::Integer(i) => {
            match i128::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                Ok(n) if n < 0 => {
                    cx.error(
                        v.span(),
                        format!("`{}` must be zero or more, not {n}", key_of(path)),
                        "negative",
                        None,
                    );
                    None
                }
                Ok(n) if n <= max as i128 => Some(n as u64),
                _ => {
                    cx.error(
                        v.span(),
                        format!("`{}` is too large: at most {max}", key_of(path)),
                        "too large",
                        None,
                    );
                    None
                }
            }
        }
        DeValue::Float(f) => {
            let help = format!("write a whole number without a decimal point{}", {
                let t = f.as_str();
                t.strip_suffix(".0")
                    .map(|w| format!(", like `{} = {w}`", key_of(path)))
                    .unwrap_or_default()
            });
            cx.key_help = None;
            cx.error(
                v.span(),
                format!("`{}` must be {expected}, not a float", key_of(path)),
                "a float",
                Some(help),
            );
            None
        }
        _ => {
            cx.type_error(v, path, expected);
            None
        }
    }
}

impl FromToml for u32 {
    const EXPECTED: &'static str = "a whole number";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        unsigned(v, cx, path, u32::MAX as u64, Self::EXPECTED).map(|n| n as u32)
    }
}

impl FromToml for u64 {
    const EXPECTED: &'static str = "a whole number";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        unsigned(v, cx, path, u64::MAX, Self::EXPECTED)
    }
}

/// A finite number (integers are accepted).
impl FromToml for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let x = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i128::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                cx.type_error(v, path, Self::EXPECTED);
                return None;
            }
        };
        match x {
            Some(x) if x.is_finite() => Some(x),
            _ => {
                let text = cx.src.text.get(v.span()).unwrap_or("").to_string();
                let help = cx.key_help.take();
                cx.error(
                    v.span(),
                    format!("`{}` must be a finite number, not `{text}`", key_of(path)),
                    "not finite",
                    help,
                );
                None
            }
        }
    }
}

/// A string value parsed by `parse`, whose error is `(message, help)`.
fn parsed_string<T>(
    v: &Spanned<DeValue<'_>>,
    cx: &mut Cx,
    path: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, (String, String)>,
) -> Option<T> {
    let DeValue::String(s) = v.get_ref() else {
        cx.type_error(v, path, expected);
        return None;
    };
    match parse(s) {
        Ok(t) => Some(t),
        Err((message, help)) => {
            cx.error(v.span(), message, "", Some(help));
            None
        }
    }
}

/// Warns when a name was accepted (parsers ignore case and know aliases) but is not one of
/// the spellings the JSON schema lists, so editors and `mgpu check` do not silently disagree.
fn spelling_warning<T: JsonSchema>(cx: &mut Cx, v: &Spanned<DeValue<'_>>, canonical: &str) {
    let DeValue::String(text) = v.get_ref() else {
        return;
    };
    let schema = T::json_schema(&mut crate::manifest::schema::generator());
    let listed = schema
        .get("enum")
        .and_then(|e| e.as_array())
        .is_some_and(|e| e.iter().any(|x| x.as_str() == Some(text.as_ref())));
    if !listed {
        cx.warning(
            v.span(),
            format!("`{text}` is read as `{canonical}`"),
            "",
            Some(format!("write `{canonical}`: it is the spelling the manifest schema (and editors using it) accept")),
        );
    }
}

fn name_error(e: NameError, plural: &str) -> (String, String) {
    let did_you_mean = e
        .suggestion
        .map(|s| format!("did you mean `{s}`? "))
        .unwrap_or_default();
    (
        format!("unknown {} `{}`", e.what, e.name),
        format!("{did_you_mean}{plural}: {}", e.valid),
    )
}

macro_rules! named_from_toml {
    ($($ty:ty => $plural:literal),* $(,)?) => {$(
        impl FromToml for $ty {
            const EXPECTED: &'static str = "a string";
            fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
                let out = parsed_string(v, cx, path, Self::EXPECTED, |s| <$ty>::parse(s).map_err(|e| name_error(e, $plural)))?;
                spelling_warning::<$ty>(cx, v, out.name());
                Some(out)
            }
        }
    )*};
}

named_from_toml!(
    Sampler => "samplers",
    Scheduler => "schedulers",
    crate::manifest::names::ComputeDtype => "dtypes",
    crate::manifest::names::FluxVariant => "variants",
    crate::manifest::names::LoraMode => "LoRA modes",
);

impl FromToml for Family {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let out = parsed_string(v, cx, path, Self::EXPECTED, |s| {
            Family::parse(s).map_err(|e| {
                let did_you_mean = e
                    .suggestion
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                (
                    format!("unknown model family `{}`", e.name),
                    format!("{did_you_mean}families: {}", crate::family::names()),
                )
            })
        })?;
        spelling_warning::<Family>(cx, v, out.name());
        Some(out)
    }
}

impl FromToml for DeviceName {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        parsed_string(v, cx, path, Self::EXPECTED, |s| {
            DeviceName::parse(s).map_err(|e| {
                (
                    alloc::parse_device_message(&e),
                    alloc::parse_device_help(&e),
                )
            })
        })
    }
}

impl FromToml for ByteSize {
    const EXPECTED: &'static str = "a size like \"12GiB\" or a whole number of bytes";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::String(s) => match ByteSize::parse(s) {
                Ok(b) => Some(b),
                Err(e) => {
                    let span = cx.content(&v.span(), e.offset..e.offset + e.len);
                    let span = if span.is_empty() { v.span() } else { span };
                    cx.error(
                        span,
                        alloc::parse_size_message(&e.kind),
                        "",
                        Some(format!("units are {}", crate::units::UNIT_HELP)),
                    );
                    None
                }
            },
            DeValue::Integer(_) => unsigned(v, cx, path, u64::MAX, Self::EXPECTED).map(ByteSize),
            _ => {
                cx.type_error(v, path, Self::EXPECTED);
                None
            }
        }
    }
}

impl FromToml for Allocation {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let DeValue::String(s) = v.get_ref() else {
            cx.type_error(v, path, Self::EXPECTED);
            return None;
        };
        match alloc::parse_all(s) {
            Ok(a) => Some(a),
            Err(errors) => {
                for e in errors {
                    let at = |r: Range<usize>| {
                        let span = cx.content(&v.span(), r);
                        if span.is_empty() {
                            // Empty ranges (an empty allocation) underline the whole value.
                            if span.start >= v.span().end - 1 || s.trim().is_empty() {
                                v.span()
                            } else {
                                span.start..span.start + 1
                            }
                        } else {
                            span
                        }
                    };
                    let mut d = Diagnostic::error(e.kind.to_string())
                        .at(&cx.src, at(e.span.clone()), "")
                        .with_help(e.help());
                    if let Some((r, text)) = &e.related {
                        d = d.with_secondary(at(r.clone()), text.clone());
                    }
                    cx.push(d);
                }
                None
            }
        }
    }
}
