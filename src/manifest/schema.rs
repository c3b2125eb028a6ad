//! The manifest's JSON schema, generated from the raw types ([`super::raw`]) with schemars.
//!
//! `mgpu schema` prints it; `schemas/manifest.schema.json` is the committed copy (a test fails
//! when it is stale). TOML has no null, so the `null` that schemars adds to optional fields is
//! removed, and descriptions are unwrapped.

use schemars::generate::SchemaSettings;
use schemars::transform::{transform_subschemas, Transform};
use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

/// The generator every manifest schema comes from (draft 2020-12, no nulls).
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with_transform(NoNull)
        .into_generator()
}

/// The manifest schema.
pub fn manifest_schema() -> Schema {
    generator().into_root_schema_for::<super::raw::RawManifest>()
}

/// The manifest schema as pretty JSON with a final newline (the committed file's content).
pub fn manifest_schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&manifest_schema()).unwrap_or_default();
    s.push('\n');
    s
}

/// Removes `null` from `type` arrays and `{"type": "null"}` from `anyOf`; joins the lines of
/// descriptions (doc comments wrap at 100 columns; paragraphs stay apart).
#[derive(Debug, Clone)]
struct NoNull;

impl Transform for NoNull {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(obj) = schema.as_object_mut() {
            if let Some(Value::String(d)) = obj.get_mut("description") {
                *d = d
                    .split("\n\n")
                    .map(|p| p.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types.remove(0);
                    obj.insert("type".into(), t);
                }
            }
            if let Some(Value::Array(any)) = obj.get_mut("anyOf") {
                any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
                if any.len() == 1 {
                    if let Some(Value::Object(only)) = any.pop() {
                        obj.remove("anyOf");
                        for (k, v) in only {
                            obj.entry(k).or_insert(v);
                        }
                    }
                }
            }
        }
        transform_subschemas(self, schema);
    }
}
