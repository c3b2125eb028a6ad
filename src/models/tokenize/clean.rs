//! Prompt cleaning before Wan's umT5 tokenizer, as Wan 2.1 (`wan/modules/tokenizers.py`,
//! `HuggingfaceTokenizer(clean='whitespace')`) and diffusers' `WanPipeline` (`prompt_clean`) do
//! it (read, not copied):
//!
//! ```text
//! basic_clean(t)      = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
//! whitespace_clean(t) = regex.sub(r"\s+", " ", t).strip()
//! prompt_clean(t)     = whitespace_clean(basic_clean(t))
//! ```
//!
//! [`wan_prompt_clean`] reproduces this exactly **except `ftfy.fix_text`**, a library of
//! heuristics (mojibake repair such as `â€™` → `’`, terminal escapes, C1 controls, lossy
//! sequences, ligatures, full-width letters, NFC normalisation, …) that cannot be reproduced
//! exactly without porting ftfy. What we do instead:
//! - ftfy's `uncurl_quotes` (on by default, and not undone by any tokenizer normaliser):
//!   `ʼ ‘ ’ ‚ ‛` → `'` and `“ ” „ ‟` → `"`;
//! - nothing else of ftfy. Ligatures (`ﬁ`), full-width forms and compatibility characters are
//!   folded by umT5's SentencePiece normaliser (NFKC-based) anyway; mojibake is left as typed.
//!
//! `html.unescape` is Python's exactly: named references from the HTML5 table
//! (`html5_entities.txt`, generated from Python's `html.entities.html5` by
//! `tools/gen_html_entities.py`) including the legacy names without `;` and longest-prefix
//! matching (`&notit;` → `¬it;`); numeric references with Python's replacements (`&#0;` → U+FFFD,
//! `&#128;` … `&#159;` → Windows-1252, surrogates and values past U+10FFFF → U+FFFD, Unicode
//! non-characters and most control characters → removed). Whitespace is `regex`'s `\s` (the
//! Unicode White_Space property) for the collapse, and `str.strip`'s (White_Space plus
//! U+001C…U+001F) for the ends. `tests/text_parity.rs` checks all of this against Python.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The HTML5 named references, `name → text`.
fn entities() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        include_str!("html5_entities.txt")
            .lines()
            .filter_map(|line| {
                let (name, cps) = line.split_once('\t')?;
                let text = cps
                    .split(' ')
                    .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
                    .collect::<Option<String>>()?;
                Some((name, text))
            })
            .collect()
    })
}

/// Python's `html._invalid_charrefs`: numeric references replaced by another character.
fn invalid_charref(n: u32) -> Option<char> {
    const CP1252: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039,
        0x152, 0x8D, 0x17D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D, 0x17E, 0x178,
    ];
    match n {
        0x00 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => char::from_u32(CP1252[(n - 0x80) as usize]),
        _ => None,
    }
}

/// Python's `html._invalid_codepoints`: numeric references that become nothing.
fn invalid_codepoint(n: u32) -> bool {
    matches!(n, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (n & 0xFFFE == 0xFFFE && n <= 0x10FFFF)
}

/// The text of numeric reference `digits` (already without `#`/`#x` and `;`).
fn numeric(digits: &str, radix: u32) -> String {
    // Python parses any length; past U+10FFFF the value no longer matters.
    let n = digits
        .trim_start_matches('0')
        .chars()
        .try_fold(0u32, |acc, c| {
            let d = c.to_digit(radix)?;
            acc.checked_mul(radix)
                .and_then(|a| a.checked_add(d))
                .filter(|&a| a <= 0x10FFFF)
                .or(Some(0x110000))
        })
        .unwrap_or(0x110000);
    if let Some(c) = invalid_charref(n) {
        return c.to_string();
    }
    if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
        return '\u{FFFD}'.to_string();
    }
    if invalid_codepoint(n) {
        return String::new();
    }
    char::from_u32(n).map(String::from).unwrap_or_default()
}

/// Python's `html.unescape`: replaces every match of
/// `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`, left to right.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i + 1;
        // Numeric: `#digits` or `#x hexdigits`, an optional `;`.
        if chars.get(start) == Some(&'#') {
            let hex = matches!(chars.get(start + 1), Some('x' | 'X'))
                && chars.get(start + 2).is_some_and(|c| c.is_ascii_hexdigit());
            let (from, radix) = if hex {
                (start + 2, 16)
            } else {
                (start + 1, 10)
            };
            let mut end = from;
            while chars.get(end).is_some_and(|c| c.is_digit(radix)) {
                end += 1;
            }
            if end == from {
                out.push('&'); // `&#` with no digits is not a reference
                i += 1;
                continue;
            }
            let digits: String = chars[from..end].iter().collect();
            out.push_str(&numeric(&digits, radix));
            i = if chars.get(end) == Some(&';') {
                end + 1
            } else {
                end
            };
            continue;
        }
        // Named: 1…32 characters other than `\t \n \f space < & # ;`, an optional `;`.
        let mut end = start;
        while end < chars.len()
            && end - start < 32
            && !matches!(
                chars[end],
                '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'
            )
        {
            end += 1;
        }
        if end == start {
            out.push('&');
            i += 1;
            continue;
        }
        if chars.get(end) == Some(&';') {
            end += 1;
        }
        let name: String = chars[start..end].iter().collect();
        out.push_str(&named(&name, &chars[start..end]));
        i = end;
    }
    out
}

/// Python's `_replace_charref` for a named reference: the whole name, else its longest prefix
/// of at least 2 characters that is a name (the rest kept), else `&name` unchanged.
fn named(name: &str, chars: &[char]) -> String {
    let table = entities();
    if let Some(t) = table.get(name) {
        return t.clone();
    }
    for x in (2..chars.len()).rev() {
        let prefix: String = chars[..x].iter().collect();
        if let Some(t) = table.get(prefix.as_str()) {
            let rest: String = chars[x..].iter().collect();
            return format!("{t}{rest}");
        }
    }
    format!("&{name}")
}

/// Python's `str.isspace` (what `strip()` removes): White_Space plus U+001C…U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// ftfy's `uncurl_quotes`: `[ʼ‘-‛]` → `'`, `[“-‟]` → `"`.
pub fn uncurl_quotes(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            c => c,
        })
        .collect()
}

/// Runs of `regex`'s `\s` (Unicode White_Space) → one space, then `str.strip()`.
pub fn whitespace_clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(py_space).to_string()
}

/// Wan's / diffusers' `prompt_clean` with ftfy replaced as the module docs say:
/// `whitespace_clean(html_unescape(html_unescape(uncurl_quotes(t))).strip())`.
pub fn wan_prompt_clean(prompt: &str) -> String {
    let t = html_unescape(&html_unescape(&uncurl_quotes(prompt)));
    whitespace_clean(t.trim_matches(py_space))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_like_python() {
        assert_eq!(entities().len(), 2231);
        for (input, want) in [
            ("a &amp; b", "a & b"),
            ("&amp;amp;", "&amp;"),
            ("&lt;b&gt; &quot;x&quot; &#39;y&#39;", "<b> \"x\" 'y'"),
            ("&notit; &notin;", "¬it; ∉"),
            ("&amp", "&"),
            ("&ampx", "&x"),
            ("&zz;", "&zz;"),
            ("&#x41;&#65&#X6a;", "AAj"),
            (
                "&#0; &#128; &#x9F; &#xD800; &#1114112;",
                "\u{FFFD} € Ÿ \u{FFFD} \u{FFFD}",
            ),
            ("a&#1;b&#xFFFF;c&#13;", "abc\r"),
            ("&# &#x &", "&# &#x &"),
            ("&NotNestedGreaterGreater;", "\u{2AA2}\u{338}"),
            ("caf&eacute; 東京", "café 東京"),
        ] {
            assert_eq!(html_unescape(input), want, "{input:?}");
        }
    }

    #[test]
    fn cleans_like_wan() {
        assert_eq!(
            wan_prompt_clean("  A “cat”\u{a0}\u{3000}on &amp;amp; a\n\tmat ’s \u{1c}"),
            "A \"cat\" on & a mat 's"
        );
        assert_eq!(wan_prompt_clean(""), "");
        assert_eq!(whitespace_clean("\u{1c}a\u{1c}b"), "a\u{1c}b");
    }
}
