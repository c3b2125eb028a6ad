//! Golden outputs: record hashes of decoded pixels and latents, verify bit-exactly.
