//! Reading the spanned TOML tree (`toml::de::DeTable`) into the raw manifest types, collecting
//! every problem instead of stopping at the first.
//!
//! Each raw table type ([`super::raw`]) is declared once with `raw_table!`: the same
//! declaration gives the JSON schema (schemars derive: doc comments become descriptions,
//! `#[schemars(required)]` marks required keys) and the reader (known keys, required keys and
//! key descriptions are taken from that schema, so the two cannot disagree). Every field is
//! `Option<Sp<T>>`: a missing or invalid value is reported and left `None`, and the other keys
//! are still read, so later checks run on everything that could be read.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Deref, Range};
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{content_span, Diagnostic, Diagnostics, SourceFile};

mod values;

/// A value and the byte range it was written at in the manifest (for a string: quotes
/// included).
#[derive(Debug, Clone, PartialEq)]
pub struct Sp<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The schema of `Sp<T>` is `T`'s: spans are not part of the file format.
impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// Reading context: the source, the diagnostics so far, and the span of every value read,
/// by path (`models.flux.allocation`, `jobs.0.output`, `models.flux.loras.1.file`).
pub(crate) struct Cx {
    pub src: Arc<SourceFile>,
    pub diags: Diagnostics,
    pub spans: BTreeMap<String, Range<usize>>,
    /// The description of the key being read, for the help line of a type error.
    key_help: Option<String>,
}

impl Cx {
    pub fn new(src: Arc<SourceFile>) -> Self {
        Cx {
            src,
            diags: Diagnostics::new(),
            spans: BTreeMap::new(),
            key_help: None,
        }
    }

    /// Reports an error at `span`.
    pub fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let mut d = Diagnostic::error(message).at(&self.src, span, label);
        d.help = help;
        self.diags.push(d);
    }

    /// Reports a warning at `span`.
    pub fn warning(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let mut d = Diagnostic::warning(message).at(&self.src, span, label);
        d.help = help;
        self.diags.push(d);
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// The file range of `inner`, a byte range of the content of the string value at `value`.
    pub fn content(&self, value: &Range<usize>, inner: Range<usize>) -> Range<usize> {
        content_span(&self.src.text, value.clone(), inner)
    }

    fn type_error(&mut self, v: &Spanned<DeValue<'_>>, path: &str, expected: &str) {
        let found = a_type(v.get_ref());
        let help = self.key_help.take();
        self.error(
            v.span(),
            format!("`{}` must be {expected}, not {found}", key_of(path)),
            found.to_string(),
            help,
        );
    }
}

fn a_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The last named segment of a path (`models.flux.loras.0` → `loras`).
fn key_of(path: &str) -> &str {
    path.rsplit('.')
        .find(|s| s.parse::<usize>().is_err())
        .unwrap_or(path)
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How a table at `path` is named in messages: `` `[models.flux]` ``, `` `[[jobs]]` #2 ``,
/// `` `loras` #1 of `[models.flux]` ``.
pub(crate) fn table_name(path: &str) -> String {
    if path.is_empty() {
        return "the top level".into();
    }
    match path.rsplit_once('.') {
        Some((parent, last)) if last.parse::<usize>().is_ok() => {
            let n = last.parse::<usize>().unwrap_or(0) + 1;
            match parent.rsplit_once('.') {
                None => format!("`[[{parent}]]` #{n}"),
                Some((pp, key)) => format!("`{key}` #{n} of {}", table_name(pp)),
            }
        }
        _ => format!("`[{path}]`"),
    }
}

/// A value type the reader can produce.
pub(crate) trait FromToml: Sized {
    /// What the value must be, for type errors: "a string", "an integer".
    const EXPECTED: &'static str;
    /// Tables report their own problems and are kept (partially read) in arrays.
    const IS_TABLE: bool = false;
    /// Reads `v` (at `path`), reporting problems to `cx`; `None` when it could not be read.
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self>;
}

impl<T: FromToml> FromToml for Sp<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    const IS_TABLE: bool = T::IS_TABLE;
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        T::from_toml(v, cx, path).map(|value| Sp {
            value,
            span: v.span(),
        })
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    const EXPECTED: &'static str = "an array";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let DeValue::Array(items) = v.get_ref() else {
            cx.type_error(v, path, Self::EXPECTED);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = join(path, &i.to_string());
            cx.spans.insert(p.clone(), item.span());
            match T::from_toml(item, cx, &p) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        // Tables are always kept (their problems were reported); an array of scalars with a
        // bad element is not used at all, so later checks do not see a shortened list.
        (ok || T::IS_TABLE).then_some(out)
    }
}

/// Names of models, pipelines and jobs: they appear in output paths and commands.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_-]+$";

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A table of named tables (`[models.NAME]`), in file order.
#[derive(Debug, Clone, Default)]
pub struct Named<T>(pub Vec<(Sp<String>, Sp<T>)>);

impl<T: JsonSchema> JsonSchema for Named<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Named_{}", T::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let item = generator.subschema_for::<T>();
        schemars::json_schema!({
            "type": "object",
            "propertyNames": { "pattern": NAME_PATTERN },
            "additionalProperties": item,
        })
    }
}

impl<T: FromToml> FromToml for Named<T> {
    const EXPECTED: &'static str = "a table";
    fn from_toml(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let DeValue::Table(t) = v.get_ref() else {
            cx.type_error(v, path, Self::EXPECTED);
            return None;
        };
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(_, v)| v.span().start);
        let mut out = Vec::new();
        for (k, item) in entries {
            let name = k.get_ref().to_string();
            if !valid_name(&name) {
                cx.error(
                    k.span(),
                    format!("`{name}` is not a valid name"),
                    "",
                    Some("names use letters, digits, `_` and `-` (they appear in output paths and messages)".into()),
                );
            }
            let p = join(path, &name);
            cx.spans.insert(p.clone(), item.span());
            if let Some(x) = T::from_toml(item, cx, &p) {
                out.push((
                    Sp {
                        value: name,
                        span: k.span(),
                    },
                    Sp {
                        value: x,
                        span: item.span(),
                    },
                ));
            }
        }
        Some(Named(out))
    }
}

/// Keys, required keys and key descriptions of a raw table type, taken from its schema.
pub(crate) struct TableMeta {
    pub keys: &'static [&'static str],
    pub required: BTreeSet<String>,
    pub descriptions: BTreeMap<String, String>,
}

impl TableMeta {
    pub fn from_schema<T: JsonSchema>(keys: &'static [&'static str]) -> Self {
        let schema = super::schema::generator().into_root_schema_for::<T>();
        let required = schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let descriptions = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|props| {
                props
                    .iter()
                    .filter_map(|(k, v)| {
                        let d = v.get("description")?.as_str()?;
                        Some((
                            k.clone(),
                            d.split("\n\n").next().unwrap_or(d).replace('\n', " "),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        TableMeta {
            keys,
            required,
            descriptions,
        }
    }
}

/// A raw table type declared with `raw_table!`.
pub(crate) trait RawTable: Sized {
    fn meta() -> &'static TableMeta;
    fn read(r: &mut TableReader<'_, '_>, cx: &mut Cx) -> Self;
}

/// Reads the keys of one TOML table.
pub(crate) struct TableReader<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    path: &'t str,
    meta: &'static TableMeta,
    /// Required keys not found, reported by `finish` unless a misspelling explains them.
    missing: Vec<&'static str>,
}

impl TableReader<'_, '_> {
    /// Reads key `key` (listed in the table's `KEYS`); reports it when required and missing.
    pub fn field<T: FromToml>(&mut self, cx: &mut Cx, key: &'static str) -> Option<Sp<T>> {
        let path = join(self.path, key);
        let Some((_, v)) = self.table.iter().find(|(k, _)| k.get_ref() == key) else {
            if self.meta.required.contains(key) {
                self.missing.push(key);
            }
            return None;
        };
        cx.spans.insert(path.clone(), v.span());
        cx.key_help = self
            .meta
            .descriptions
            .get(key)
            .map(|d| format!("{key}: {d}"));
        let out = T::from_toml(v, cx, &path).map(|value| Sp {
            value,
            span: v.span(),
        });
        cx.key_help = None;
        out
    }

    /// Reports every key the type does not have, and required keys that are missing (unless
    /// an unknown key is their misspelling: then only that is reported).
    fn finish(self, cx: &mut Cx) {
        let mut explained = Vec::new();
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if self.meta.keys.contains(&key) {
                continue;
            }
            let (help, suggestion) = unknown_key_help(key, self.meta.keys, self.path);
            explained.extend(suggestion);
            cx.error(
                k.span(),
                format!("unknown key `{key}` in {}", table_name(self.path)),
                "unknown key",
                Some(help),
            );
        }
        for key in self.missing {
            if explained.contains(&key) {
                continue;
            }
            let what = self
                .meta
                .descriptions
                .get(key)
                .map(|d| format!("{key}: {d}"));
            cx.error(
                self.span.clone(),
                format!("missing key `{key}` in {}", table_name(self.path)),
                format!("`{key}` is required here"),
                what,
            );
        }
    }
}

/// The closest key: a misspelling within 2 edits that keeps most of the key.
fn closest_key(key: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|&(d, k)| d <= 2 && 2 * d < k.len().max(key.len()))
        .min()
        .map(|(_, k)| k)
}

/// The help for an unknown key: where it belongs, or did you mean…, and the valid keys here.
fn unknown_key_help(
    key: &str,
    keys: &[&'static str],
    path: &str,
) -> (String, Option<&'static str>) {
    let valid = keys
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(home) = super::raw::key_home(key, path) {
        return (
            format!("`{key}` belongs in {home}; valid keys here: {valid}"),
            None,
        );
    }
    if let Some(s) = closest_key(key, keys) {
        return (
            format!("did you mean `{s}`? valid keys here: {valid}"),
            Some(s),
        );
    }
    (format!("valid keys here: {valid}"), None)
}

impl<T: RawTable> TableValue for T {}

/// Marker for raw table types, so `FromToml` can be implemented for them in `raw_table!`.
pub(crate) trait TableValue: RawTable {
    fn read_table(v: &Spanned<DeValue<'_>>, cx: &mut Cx, path: &str) -> Option<Self> {
        let DeValue::Table(t) = v.get_ref() else {
            let found = a_type(v.get_ref());
            cx.error(
                v.span(),
                format!("{} must be a table, not {found}", table_name(path)),
                found,
                None,
            );
            return None;
        };
        let mut r = TableReader {
            table: t,
            span: v.span(),
            path,
            meta: Self::meta(),
            missing: Vec::new(),
        };
        let out = Self::read(&mut r, cx);
        r.finish(cx);
        Some(out)
    }
}

/// Declares a raw table type: the struct (all fields `Option<Sp<T>>`, with the schema derive)
/// and its reader. Field names are the TOML keys.
macro_rules! raw_table {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Clone, Default, schemars::JsonSchema)]
        $(#[$m])*
        #[schemars(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $field: Option<$crate::manifest::read::Sp<$ty>>,)*
        }

        impl $crate::manifest::read::RawTable for $name {
            fn meta() -> &'static $crate::manifest::read::TableMeta {
                static META: std::sync::OnceLock<$crate::manifest::read::TableMeta> = std::sync::OnceLock::new();
                META.get_or_init(|| $crate::manifest::read::TableMeta::from_schema::<$name>(&[$(stringify!($field)),*]))
            }
            fn read(r: &mut $crate::manifest::read::TableReader<'_, '_>, cx: &mut $crate::manifest::read::Cx) -> Self {
                $name { $($field: r.field::<$ty>(cx, stringify!($field)),)* }
            }
        }

        impl $crate::manifest::read::FromToml for $name {
            const EXPECTED: &'static str = "a table";
            const IS_TABLE: bool = true;
            fn from_toml(
                v: &serde_spanned::Spanned<toml::de::DeValue<'_>>,
                cx: &mut $crate::manifest::read::Cx,
                path: &str,
            ) -> Option<Self> {
                <$name as $crate::manifest::read::TableValue>::read_table(v, cx, path)
            }
        }
    };
}
pub(crate) use raw_table;

/// Parses the document, reporting TOML syntax errors (all of them) as diagnostics.
pub(crate) fn parse_document<'i>(text: &'i str, cx: &mut Cx) -> Option<Spanned<DeValue<'i>>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        let span = table.span();
        return Some(Spanned::new(span, DeValue::Table(table.into_inner())));
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().replace('\n', "; ");
        cx.error(
            span,
            format!("TOML syntax: {message}"),
            "",
            Some("see https://toml.io for the syntax".into()),
        );
    }
    None
}
