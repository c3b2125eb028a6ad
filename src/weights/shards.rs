//! Sharded safetensors sets: `model.safetensors.index.json` (Hugging Face's layout) maps every
//! tensor name to the shard file holding it (`"weight_map": {name: "model-00001-of-00003.safetensors"}`),
//! beside an optional `"metadata"` object. [`read_index`] parses and checks the index itself;
//! [`crate::weights::WeightFile`] then validates every shard's header and checks that the
//! index and the shards agree exactly: each mapped name is in its shard, no name is in two
//! shards, no shard holds a name the index does not list.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::meta::{MetaValue, Metadata};
use super::WeightsError;

/// Indexes larger than this are refused (a real index of 100k tensors is a few MB).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// A parsed index.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// Shard paths (resolved beside the index), in order of first mention.
    pub shards: Vec<PathBuf>,
    /// Tensor name → position in `shards`.
    pub weight_map: BTreeMap<String, usize>,
    /// The index's `metadata` object (`total_size`, …).
    pub metadata: Metadata,
}

/// Whether `path` is named like a sharded-set index.
pub fn is_index_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// Parses the index whose bytes are `bytes`.
pub fn read_index(path: &Path, bytes: &[u8]) -> Result<Index, WeightsError> {
    let fail = |m: String| WeightsError::format(path, m);
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(fail(format!(
            "index is {} bytes, over the {MAX_INDEX_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| fail(format!("index is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| fail("index is not a JSON object".into()))?;
    let map = obj
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| fail("index has no `weight_map` object (expected {\"weight_map\": {tensor: shard file}})".into()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| fail(format!("weight_map[`{name}`] is not a file name string")))?;
        let rel = Path::new(file);
        if file.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(fail(format!(
                "weight_map[`{name}`] = `{file}`: shard files must be plain relative paths beside the index (no `..`, no absolute paths)"
            )));
        }
        let i = match names.iter().position(|n| n == file) {
            Some(i) => i,
            None => {
                names.push(file.to_string());
                shards.push(dir.join(rel));
                names.len() - 1
            }
        };
        weight_map.insert(name.clone(), i);
    }
    if shards.is_empty() {
        return Err(fail("index lists no tensors".into()));
    }
    let mut metadata = Metadata::new();
    if let Some(m) = obj.get("metadata").and_then(|m| m.as_object()) {
        for (k, v) in m {
            let mv = match v {
                serde_json::Value::String(s) => MetaValue::String(s.clone()),
                serde_json::Value::Bool(b) => MetaValue::Bool(*b),
                serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => MetaValue::U64(u),
                    (_, Some(i), _) => MetaValue::I64(i),
                    (_, _, Some(f)) => MetaValue::F64(f),
                    _ => MetaValue::String(n.to_string()),
                },
                other => MetaValue::String(other.to_string()),
            };
            metadata.insert(k.clone(), mv);
        }
    }
    Ok(Index {
        shards,
        weight_map,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let p = Path::new("/m/model.safetensors.index.json");
        let ix = read_index(
            p,
            br#"{"metadata":{"total_size":123},"weight_map":{"b":"s2.safetensors","a":"s1.safetensors","c":"s2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(ix.shards.len(), 2);
        assert_eq!(
            ix.shards[ix.weight_map["b"]],
            Path::new("/m/s2.safetensors")
        );
        assert_eq!(ix.metadata["total_size"], MetaValue::U64(123));
        for (bad, want) in [
            (
                r#"{"weight_map":{"a":"../x.safetensors"}}"#,
                "plain relative",
            ),
            (r#"{"weight_map":{"a":"/etc/x"}}"#, "plain relative"),
            (r#"{"weight_map":{"a":3}}"#, "not a file name"),
            (r#"{"weight_map":{}}"#, "no tensors"),
            (r#"{"metadata":{}}"#, "no `weight_map`"),
            (r#"{"#, "not valid JSON"),
        ] {
            let e = read_index(p, bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
