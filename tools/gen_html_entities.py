#!/usr/bin/env python3
"""Writes src/models/tokenize/html5_entities.txt: the HTML5 named character references exactly as
Python's `html.unescape` knows them (`html.entities.html5`, 2231 names with and without the
trailing `;`), one `name<TAB>code points in hex` per line, sorted by name. mgpu's prompt cleaning
(src/models/tokenize/clean.rs) reads it with `include_str!` to unescape prompts as Wan and
diffusers do (`html.unescape(html.unescape(text))`). Also checks that Python's numeric-reference
tables are the ones clean.rs hard-codes.

Run from the repository root with any Python 3.11+:  python tools/gen_html_entities.py
"""

import html
import html.entities
import pathlib

OUT = pathlib.Path(__file__).resolve().parent.parent / "src" / "models" / "tokenize" / "html5_entities.txt"

lines = []
for name, value in sorted(html.entities.html5.items()):
    assert "\t" not in name and name.isascii()
    lines.append(name + "\t" + " ".join(f"{ord(c):X}" for c in value))
OUT.write_text("\n".join(lines) + "\n")
print(f"wrote {OUT} ({len(lines)} entities)")

# clean.rs hard-codes these two tables of html/__init__.py; fail loudly if Python changes them.
invalid_charrefs = {k: ord(v) for k, v in html._invalid_charrefs.items()}
print("invalid_charrefs:", {hex(k): hex(v) for k, v in sorted(invalid_charrefs.items())})
print("invalid_codepoints:", len(html._invalid_codepoints))
