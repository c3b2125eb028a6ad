//! Name templates for the key-layout tables: dot-separated segments where `{i}` and `{j}`
//! capture a block index, and `{r}`/`{R}` capture an index that counts from the other end
//! (diffusers' `up_blocks.{r}` is LDM's `up.{R}` with `R = n - 1 - r`).
//!
//! Templates are whole-segment: `double_blocks.{i}.img_attn.qkv` matches
//! `double_blocks.12.img_attn.qkv` and nothing else. Indices are plain decimals without leading
//! zeros, so a name and its mapped name always print the same index.

/// Captured indices of one match, by placeholder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    vals: [Option<u64>; 4],
}

fn slot(c: &str) -> Option<usize> {
    match c {
        "{i}" => Some(0),
        "{j}" => Some(1),
        "{r}" => Some(2),
        "{R}" => Some(3),
        _ => None,
    }
}

fn parse_index(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Caps {
    pub(crate) fn get(&self, placeholder: &str) -> Option<u64> {
        self.vals[slot(placeholder)?]
    }
}

/// Matches `name` against `tpl`; `None` if it does not match.
pub(crate) fn matches(tpl: &str, name: &str) -> Option<Caps> {
    let mut caps = Caps::default();
    let mut t = tpl.split('.');
    let mut n = name.split('.');
    loop {
        match (t.next(), n.next()) {
            (None, None) => return Some(caps),
            (Some(ts), Some(ns)) => match slot(ts) {
                Some(k) => {
                    let v = parse_index(ns)?;
                    if caps.vals[k].is_some_and(|old| old != v) {
                        return None;
                    }
                    caps.vals[k] = Some(v);
                }
                None if ts == ns => {}
                None => return None,
            },
            _ => return None,
        }
    }
}

/// Writes `tpl` with the captured indices. `{R}` is filled from `{r}` (and the reverse) as
/// `n_rev - 1 - index` when only the other one was captured; `None` when a placeholder has no
/// value (or `n_rev` is needed and unknown, or out of range).
pub(crate) fn fill(tpl: &str, caps: &Caps, n_rev: Option<u64>) -> Option<String> {
    let mut out = String::with_capacity(tpl.len() + 4);
    for (k, seg) in tpl.split('.').enumerate() {
        if k > 0 {
            out.push('.');
        }
        match slot(seg) {
            None => out.push_str(seg),
            Some(s) => {
                let v = match caps.vals[s] {
                    Some(v) => v,
                    None if s >= 2 => {
                        let other = caps.vals[5 - s]?;
                        n_rev?.checked_sub(1)?.checked_sub(other)?
                    }
                    None => return None,
                };
                out.push_str(&v.to_string());
            }
        }
    }
    Some(out)
}

/// The template text up to and including its `k`-th placeholder, with the earlier
/// placeholders filled from `caps`: the "scope" whose largest index bounds that placeholder.
/// `encoder.down.{i}.block.{j}.conv1` with k = 1 and i = 2 gives `encoder.down.2.block.{j}`.
pub(crate) fn scope(tpl: &str, caps: &Caps, k: usize) -> Option<(String, &'static str)> {
    let mut out = String::new();
    let mut seen = 0;
    for (n, seg) in tpl.split('.').enumerate() {
        if n > 0 {
            out.push('.');
        }
        match slot(seg) {
            None => out.push_str(seg),
            Some(s) => {
                let ph: &'static str = ["{i}", "{j}", "{r}", "{R}"][s];
                if seen == k {
                    out.push_str(ph);
                    return Some((out, ph));
                }
                out.push_str(&caps.vals[s]?.to_string());
                seen += 1;
            }
        }
    }
    None
}

/// Placeholders of `tpl`, in order.
pub(crate) fn placeholders(tpl: &str) -> Vec<&'static str> {
    tpl.split('.')
        .filter_map(slot)
        .map(|s| ["{i}", "{j}", "{r}", "{R}"][s])
        .collect()
}

/// Caps with one more placeholder set (for enumerating instances of a template).
pub(crate) fn with(caps: &Caps, placeholder: &str, v: u64) -> Caps {
    let mut c = *caps;
    if let Some(s) = slot(placeholder) {
        c.vals[s] = Some(v);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_and_fill_table() {
        let c = matches(
            "double_blocks.{i}.img_attn.qkv",
            "double_blocks.12.img_attn.qkv",
        )
        .unwrap();
        assert_eq!(c.get("{i}"), Some(12));
        assert_eq!(
            fill("transformer_blocks.{i}.attn.to_q", &c, None).unwrap(),
            "transformer_blocks.12.attn.to_q"
        );
        for bad in [
            "double_blocks.x.img_attn.qkv",
            "double_blocks.01.img_attn.qkv",
            "double_blocks.1.img_attn",
            "double_blocks.1.img_attn.qkv.extra",
            "double_blocks..img_attn.qkv",
        ] {
            assert!(
                matches("double_blocks.{i}.img_attn.qkv", bad).is_none(),
                "{bad}"
            );
        }
        assert!(matches("ff.net.0.proj", "ff.net.0.proj").is_some());
        assert!(matches("ff.net.0.proj", "ff.net.1.proj").is_none());
    }

    #[test]
    fn reversed_indices() {
        let c = matches(
            "decoder.up_blocks.{r}.resnets.{j}",
            "decoder.up_blocks.0.resnets.2",
        )
        .unwrap();
        assert_eq!(
            fill("decoder.up.{R}.block.{j}", &c, Some(4)).unwrap(),
            "decoder.up.3.block.2"
        );
        assert_eq!(fill("decoder.up.{R}.block.{j}", &c, None), None);
        assert_eq!(fill("decoder.up.{R}.block.{j}", &c, Some(0)), None);
        let c = matches("decoder.up.{R}", "decoder.up.1").unwrap();
        assert_eq!(
            fill("decoder.up_blocks.{r}", &c, Some(4)).unwrap(),
            "decoder.up_blocks.2"
        );
    }

    #[test]
    fn scopes() {
        let c = matches(
            "encoder.down.{i}.block.{j}.conv1",
            "encoder.down.2.block.1.conv1",
        )
        .unwrap();
        assert_eq!(
            scope("encoder.down.{i}.block.{j}.conv1", &c, 0).unwrap().0,
            "encoder.down.{i}"
        );
        assert_eq!(
            scope("encoder.down.{i}.block.{j}.conv1", &c, 1).unwrap().0,
            "encoder.down.2.block.{j}"
        );
        assert_eq!(scope("encoder.down.{i}.block.{j}.conv1", &c, 2), None);
        assert_eq!(
            placeholders("encoder.down.{i}.block.{j}.conv1"),
            ["{i}", "{j}"]
        );
    }
}
