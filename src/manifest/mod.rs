//! The manifest: the user's TOML contract (models, pipelines, jobs) as raw types that keep
//! spans, JSON-schema and semantic validation, and cargo-style diagnostics.
