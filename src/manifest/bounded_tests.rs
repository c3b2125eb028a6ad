//! Diagnostics stay bounded however hostile the manifest: repeated errors are counted after
//! [`diag::MAX_RENDERED`], long lines are cut around the span, bare `\r` is not a line break.

use std::path::Path;

use super::diag::MAX_RENDERED;

fn rendered(text: &str) -> String {
    match super::load_str(Path::new("m.toml"), text) {
        Ok(_) => String::new(),
        Err(d) => d.render(false),
    }
}

const HEAD: &str = "[settings]\ncompute = \"cuda:0\"\n";

#[test]
fn twenty_thousand_semicolons_print_a_page() {
    let text = format!(
        "{HEAD}[models.flux]\nfamily = \"flux\"\nfile = \"f.safetensors\"\nallocation = \"{}\"\n",
        ";".repeat(20_000)
    );
    let out = rendered(&text);
    assert!(out.contains("error"), "{out}");
    assert!(out.len() < 64 * 1024, "{} bytes", out.len());
    assert!(
        out.lines().all(|l| l.chars().count() < 300),
        "a line too long"
    );
}

#[test]
fn bare_cr_line_endings_give_bounded_output() {
    // A 176 KB manifest whose lines end in a bare `\r` (TOML's newlines are `\n` and `\r\n`;
    // a bare `\r` is an error, and the whole file is one line).
    let mut text = String::from(HEAD);
    while text.len() < 176 * 1024 {
        text.push_str("[[jobs]]\rprompt = \"a fox\"\rseed = 1\r");
    }
    let out = rendered(&text.replace('\n', "\r"));
    assert!(out.contains("error"), "{out}");
    assert!(out.len() < 64 * 1024, "{} bytes", out.len());
    // Control characters never reach the terminal raw.
    assert!(!out.contains('\r'));
}

#[test]
fn many_errors_are_counted_after_the_cap() {
    let mut text = String::from(HEAD);
    for i in 0..200 {
        text.push_str(&format!("unknown{i} = 1\n"));
    }
    let out = rendered(&text);
    let shown = out.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(shown, MAX_RENDERED, "{out}");
    assert!(out.contains("more, not shown"), "{out}");
}
