//! Output collisions: two images (of one job or of two) must not write the same file.
//!
//! The check reasons about templates instead of listing every path, so it works at any size
//! in memory that grows with the number of jobs, not of images (docs/output.md, "Collisions"):
//!
//! 1. Each job's template becomes a *shape*: its job-constant placeholders (`{job}`,
//!    `{width}`, …) filled in, `{seed}` and `{index}` left as number tokens, split into path
//!    components and normalised like the final path (`.` and empty components dropped, `..`
//!    removing the one before). Number tokens never contain `/`, `.` or `..`.
//! 2. **Within a job** images cannot collide when the shape still has a number token: from one
//!    image to the next both `{seed}` and `{index}` grow, so every token's rendering is at least
//!    as long; two images with equally long paths therefore have equally long tokens at the same
//!    places, the same digits in them, and the same seed and index. A shape without a number
//!    token (`{index}/../a.png`) writes every image of the job to one file.
//! 3. **Across jobs** two paths can only be equal if their *skeletons* are: the shape with every
//!    run of digits and number tokens replaced by one marker. Jobs are grouped by skeleton, and
//!    only jobs within a group can collide.
//! 4. In a group whose jobs all have the same shape, with every number token between non-digit
//!    characters, each digit run of a path is exactly one token's rendering, so two paths are
//!    equal exactly when the token values are: the seeds' ranges overlap (`{seed}`), the indices
//!    meet at image 0 (`{index}`), or both. No path is listed.
//! 5. Any other group (templates differing only in digits or padding, adjacent numbers such as
//!    `{index}{seed}`) is checked by listing its paths, up to [`MAX_LISTED_IMAGES`] per group;
//!    above that the manifest is refused with an error at the jobs' `output` lines.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;

use crate::manifest::raw::{RawDefaults, RawJob};
use crate::manifest::read::{Cx, Sp};
use crate::manifest::template::Tok;
use crate::manifest::types::Job;
use crate::manifest::Diagnostic;

/// The most images of one skeleton group compared path by path (about 100 MB of paths).
pub const MAX_LISTED_IMAGES: u64 = 1_000_000;

/// A normalised shape: path components of tokens.
type Shape = Vec<Vec<Tok>>;

fn shape_of(job: &Job) -> Shape {
    let toks = job.output.shape(&job.vars(0));
    let mut out: Shape = Vec::new();
    for comp in toks.split(|t| *t == Tok::Char('/')) {
        match comp {
            [] | [Tok::Char('.')] => {}
            [Tok::Char('.'), Tok::Char('.')] => {
                // The template check keeps `..` from climbing out of the root.
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

fn is_number(t: Option<&Tok>) -> bool {
    matches!(t, Some(Tok::Seed(_) | Tok::Index(_) | Tok::Char('0'..='9')))
}

fn has_var(shape: &Shape) -> (bool, bool) {
    let any = |f: fn(&Tok) -> bool| shape.iter().flatten().any(f);
    (
        any(|t| matches!(t, Tok::Seed(_))),
        any(|t| matches!(t, Tok::Index(_))),
    )
}

/// A piece of a skeleton: a character, or one run of digits and number tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Sk {
    Char(char),
    Num,
    Sep,
}

fn skeleton(shape: &Shape) -> Vec<Sk> {
    let mut out = Vec::new();
    for comp in shape {
        out.push(Sk::Sep);
        for t in comp {
            let s = if is_number(Some(t)) {
                Sk::Num
            } else if let Tok::Char(c) = t {
                Sk::Char(*c)
            } else {
                Sk::Num
            };
            if !(s == Sk::Num && out.last() == Some(&Sk::Num)) {
                out.push(s);
            }
        }
    }
    out
}

/// The digit runs of a shape, in order: the literal digits of a run without a number token,
/// `None` for a run with one. Two jobs of one skeleton can only collide if no run that both
/// write literally differs (`j0/{index}.png` and `j1/{index}.png` cannot).
fn digit_runs(shape: &Shape) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for comp in shape {
        let mut run: Option<Option<String>> = None;
        for t in comp.iter().chain(std::iter::once(&Tok::Char('/'))) {
            match (t, &mut run) {
                (Tok::Char(c @ '0'..='9'), Some(Some(lit))) => lit.push(*c),
                (Tok::Char('0'..='9'), Some(None)) => {}
                (Tok::Char(c @ '0'..='9'), None) => run = Some(Some(c.to_string())),
                (Tok::Seed(_) | Tok::Index(_), _) => run = Some(None),
                (Tok::Char(_), _) => out.extend(run.take()),
            }
        }
    }
    out
}

fn may_collide(a: &[Option<String>], b: &[Option<String>]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| !matches!((x, y), (Some(x), Some(y)) if x != y))
}

/// Splits a skeleton group into the sets of jobs that may collide with one another.
fn components(members: &[usize], runs: &[Vec<Option<String>>]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..members.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for i in 0..members.len() {
        for j in 0..i {
            if may_collide(&runs[members[i]], &runs[members[j]]) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (i, &m) in members.iter().enumerate() {
        let root = find(&mut parent, i);
        if !by_root.contains_key(&root) {
            order.push(root);
        }
        by_root.entry(root).or_default().push(m);
    }
    order
        .into_iter()
        .filter_map(|r| by_root.remove(&r))
        .collect()
}

/// Whether every number token has a non-digit (or a component boundary) on both sides.
fn separated(shape: &Shape) -> bool {
    shape.iter().all(|comp| {
        comp.iter().enumerate().all(|(i, t)| {
            !matches!(t, Tok::Seed(_) | Tok::Index(_))
                || (!is_number(i.checked_sub(1).and_then(|p| comp.get(p)))
                    && !is_number(comp.get(i + 1)))
        })
    })
}

/// Image `b_img` of job `b` would overwrite image `a_img` of job `a` (positions in `jobs`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    b: usize,
    b_img: u32,
    a: usize,
    a_img: u32,
}

/// The first collision between two jobs of the same separated shape, if any.
fn same_shape_hit(jobs: &[Job], a: usize, b: usize, seed: bool, index: bool) -> Option<Hit> {
    let (ja, jb) = (&jobs[a], &jobs[b]);
    let at = |a_img, b_img| Some(Hit { b, b_img, a, a_img });
    match (seed, index) {
        (true, true) => (ja.seed == jb.seed).then(|| at(0, 0)).flatten(),
        (false, true) | (false, false) => at(0, 0),
        (true, false) => {
            let s = ja.seed.max(jb.seed);
            let end_a = ja.seed + ja.count as u64;
            let end_b = jb.seed + jb.count as u64;
            if s < end_a && s < end_b {
                at((s - ja.seed) as u32, (s - jb.seed) as u32)
            } else {
                None
            }
        }
    }
}

/// Lists the paths of the jobs at `members` (positions in `jobs`), first writer wins.
fn listed_hits(jobs: &[Job], members: &[usize], hits: &mut Vec<Hit>) {
    let mut seen: HashMap<PathBuf, (usize, u32)> = HashMap::new();
    let mut reported: HashSet<(usize, usize)> = HashSet::new();
    for &b in members {
        for img in jobs[b].images() {
            let Some(&(a, a_img)) = seen.get(&img.path) else {
                seen.insert(img.path, (b, img.index));
                continue;
            };
            if reported.insert((a, b)) {
                hits.push(Hit {
                    b,
                    b_img: img.index,
                    a,
                    a_img,
                });
            }
        }
    }
}

pub(super) fn check_collisions(
    cx: &mut Cx,
    jobs: &[Job],
    raw: &[Sp<RawJob>],
    defaults: &RawDefaults,
) {
    let output_span = |j: &Job| -> Range<usize> {
        let rj = &raw[j.index];
        rj.value
            .output
            .as_ref()
            .or(defaults.output.as_ref())
            .map_or(rj.span.clone(), |o| o.span.clone())
    };
    let shapes: Vec<Shape> = jobs.iter().map(shape_of).collect();
    let mut hits = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<Vec<Sk>, usize> = HashMap::new();
    for (b, shape) in shapes.iter().enumerate() {
        let (seed, index) = has_var(shape);
        if !seed && !index && jobs[b].count > 1 {
            hits.push(Hit {
                b,
                b_img: 1,
                a: b,
                a_img: 0,
            });
        }
        let g = *group_of.entry(skeleton(shape)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(b);
    }
    let runs: Vec<Vec<Option<String>>> = shapes.iter().map(digit_runs).collect();
    let sets: Vec<Vec<usize>> = groups
        .iter()
        .filter(|m| m.len() > 1)
        .flat_map(|m| components(m, &runs))
        .collect();
    for members in sets.iter().filter(|m| m.len() > 1) {
        let first = &shapes[members[0]];
        if separated(first) && members.iter().all(|&m| shapes[m] == *first) {
            let (seed, index) = has_var(first);
            // One error per job: its first image written before, by the earliest job.
            for (k, &b) in members.iter().enumerate() {
                let first = members[..k]
                    .iter()
                    .filter_map(|&a| same_shape_hit(jobs, a, b, seed, index))
                    .min_by_key(|h| (h.b_img, h.a));
                hits.extend(first);
            }
            continue;
        }
        let total: u64 = members.iter().map(|&m| jobs[m].count as u64).sum();
        if total <= MAX_LISTED_IMAGES {
            listed_hits(jobs, members, &mut hits);
            continue;
        }
        let names: Vec<String> = members
            .iter()
            .take(5)
            .map(|&m| format!("`{}`", jobs[m].name))
            .collect();
        let more = members.len().saturating_sub(5);
        let (j0, j1) = (&jobs[members[0]], &jobs[members[1]]);
        let mut d = Diagnostic::error(format!(
            "cannot check {total} images of jobs {}{} for colliding outputs",
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))
        .at(
            &cx.src,
            output_span(j1),
            format!("job `{}`: {} images", j1.name, j1.count),
        );
        let there = output_span(j0);
        if there != output_span(j1) {
            d = d.with_secondary(there, format!("job `{}`: {} images", j0.name, j0.count));
        }
        cx.push(d.with_note(format!(
            "these templates differ only in digits or padding (or put two numbers side by side), so their paths are compared one by one, and at most {MAX_LISTED_IMAGES} are"
        )).with_help(
            "make the templates differ in text, e.g. with `{job}` (`out/{job}/{seed}.png`), or separate numbers with a letter or `-`",
        ));
    }
    hits.sort();
    for h in hits {
        let (j, first) = (&jobs[h.b], &jobs[h.a]);
        let img = j.image(h.b_img);
        let shown = img
            .path
            .strip_prefix(&j.output_root)
            .unwrap_or(&img.path)
            .display()
            .to_string();
        let (here, there) = (output_span(j), output_span(first));
        let mut d = Diagnostic::error(format!("two images would be written to `{shown}`")).at(
            &cx.src,
            here.clone(),
            format!("job `{}`, image {} (seed {})", j.name, img.index, img.seed),
        );
        let first_label = format!(
            "job `{}`, image {} (seed {})",
            first.name,
            h.a_img,
            first.image(h.a_img).seed
        );
        if there == here {
            d = d.with_note(format!("also written by {first_label}"));
        } else {
            d = d.with_secondary(there, first_label);
        }
        cx.push(d.with_help(
            "make the output templates differ, e.g. with `{job}`, `{seed}` or `{index}`",
        ));
    }
}

#[cfg(test)]
#[path = "collide_tests.rs"]
mod tests;
