//! File-level metadata values: GGUF key-value entries of every GGUF value type (arrays are kept
//! typed and compact, so a file's metadata never costs much more memory than its bytes on disk),
//! and safetensors `__metadata__` strings. [`crate::weights::WeightFile::metadata`] hands these
//! out; `mgpu inspect` prints them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// A file's metadata, sorted by key.
pub type Metadata = BTreeMap<String, MetaValue>;

/// One metadata value. GGUF strings that are not valid UTF-8 are kept lossily
/// (U+FFFD replaces bad bytes), as llama.cpp's own tools do for tokenizer tables.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A homogeneous array, stored as a typed vector (GGUF arrays have one element type).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// The GGUF spelling of this value's type (`u32`, `string`, `array<i32>`, …).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::U8(_) => "u8".into(),
            MetaValue::I8(_) => "i8".into(),
            MetaValue::U16(_) => "u16".into(),
            MetaValue::I16(_) => "i16".into(),
            MetaValue::U32(_) => "u32".into(),
            MetaValue::I32(_) => "i32".into(),
            MetaValue::U64(_) => "u64".into(),
            MetaValue::I64(_) => "i64".into(),
            MetaValue::F32(_) => "f32".into(),
            MetaValue::F64(_) => "f64".into(),
            MetaValue::Bool(_) => "bool".into(),
            MetaValue::String(_) => "string".into(),
            MetaValue::Array(a) => a.type_name(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> String {
        let elem = match self {
            MetaArray::U8(_) => "u8".to_string(),
            MetaArray::I8(_) => "i8".into(),
            MetaArray::U16(_) => "u16".into(),
            MetaArray::I16(_) => "i16".into(),
            MetaArray::U32(_) => "u32".into(),
            MetaArray::I32(_) => "i32".into(),
            MetaArray::U64(_) => "u64".into(),
            MetaArray::I64(_) => "i64".into(),
            MetaArray::F32(_) => "f32".into(),
            MetaArray::F64(_) => "f64".into(),
            MetaArray::Bool(_) => "bool".into(),
            MetaArray::String(_) => "string".into(),
            MetaArray::Array(v) => v
                .first()
                .map(|a| a.type_name())
                .unwrap_or_else(|| "array".into()),
        };
        format!("array<{elem}>")
    }

    /// Renders at most `max` elements, then `… (N items)`.
    fn fmt_limited(&self, f: &mut fmt::Formatter<'_>, max: usize) -> fmt::Result {
        fn list<T>(
            f: &mut fmt::Formatter<'_>,
            v: &[T],
            max: usize,
            item: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
        ) -> fmt::Result {
            f.write_str("[")?;
            for (i, x) in v.iter().take(max).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                item(f, x)?;
            }
            if v.len() > max {
                write!(f, ", … ({} items)", v.len())?;
            }
            f.write_str("]")
        }
        match self {
            MetaArray::U8(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::I8(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::U16(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::I16(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::U32(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::I32(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::U64(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::I64(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::F32(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::F64(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::Bool(v) => list(f, v, max, |f, x| write!(f, "{x}")),
            MetaArray::String(v) => list(f, v, max, |f, x| write!(f, "{x:?}")),
            MetaArray::Array(v) => list(f, v, max, |f, x| x.fmt_limited(f, max)),
        }
    }
}

/// Human rendering: strings quoted, arrays cut after 8 items with their length.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(v) => write!(f, "{v:?}"),
            MetaValue::Array(a) => a.fmt_limited(f, 8),
        }
    }
}

impl fmt::Display for MetaArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_limited(f, 8)
    }
}

/// JSON: numbers, booleans, strings and arrays as themselves (non-finite floats become null).
impl Serialize for MetaValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetaValue::U8(v) => s.serialize_u8(*v),
            MetaValue::I8(v) => s.serialize_i8(*v),
            MetaValue::U16(v) => s.serialize_u16(*v),
            MetaValue::I16(v) => s.serialize_i16(*v),
            MetaValue::U32(v) => s.serialize_u32(*v),
            MetaValue::I32(v) => s.serialize_i32(*v),
            MetaValue::U64(v) => s.serialize_u64(*v),
            MetaValue::I64(v) => s.serialize_i64(*v),
            MetaValue::F32(v) => s.serialize_f32(*v),
            MetaValue::F64(v) => s.serialize_f64(*v),
            MetaValue::Bool(v) => s.serialize_bool(*v),
            MetaValue::String(v) => s.serialize_str(v),
            MetaValue::Array(a) => a.serialize(s),
        }
    }
}

/// The schema of [`MetaValue`]'s JSON: a number, boolean, string or null, or an array of them.
impl JsonSchema for MetaValue {
    fn schema_name() -> Cow<'static, str> {
        "MetaValue".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<MetaValue>();
        json_schema!({
            "description": "A metadata value as stored: a number, boolean or string, or an array of them (GGUF arrays are typed and may nest). Non-finite floats are null.",
            "anyOf": [
                { "type": ["number", "boolean", "string", "null"] },
                { "type": "array", "items": item }
            ]
        })
    }
}

impl Serialize for MetaArray {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn all<S: Serializer, T: Serialize>(s: S, v: &[T]) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for x in v {
                seq.serialize_element(x)?;
            }
            seq.end()
        }
        match self {
            MetaArray::U8(v) => all(s, v),
            MetaArray::I8(v) => all(s, v),
            MetaArray::U16(v) => all(s, v),
            MetaArray::I16(v) => all(s, v),
            MetaArray::U32(v) => all(s, v),
            MetaArray::I32(v) => all(s, v),
            MetaArray::U64(v) => all(s, v),
            MetaArray::I64(v) => all(s, v),
            MetaArray::F32(v) => all(s, v),
            MetaArray::F64(v) => all(s, v),
            MetaArray::Bool(v) => all(s, v),
            MetaArray::String(v) => all(s, v),
            MetaArray::Array(v) => all(s, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_json() {
        let long = MetaValue::Array(MetaArray::I32((0..20).collect()));
        assert_eq!(long.to_string(), "[0, 1, 2, 3, 4, 5, 6, 7, … (20 items)]");
        assert_eq!(long.type_name(), "array<i32>");
        let nested = MetaValue::Array(MetaArray::Array(vec![
            MetaArray::String(vec!["a".into()]),
            MetaArray::String(vec![]),
        ]));
        assert_eq!(nested.to_string(), r#"[["a"], []]"#);
        assert_eq!(nested.type_name(), "array<array<string>>");
        assert_eq!(serde_json::to_string(&nested).unwrap(), r#"[["a"],[]]"#);
        assert_eq!(MetaValue::String("x".into()).to_string(), "\"x\"");
        assert_eq!(MetaValue::I8(-3).as_u64(), None);
        assert_eq!(MetaValue::I32(64).as_u64(), Some(64));
    }
}
