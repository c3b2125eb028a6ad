//! Reads an MP4's metadata and video-track facts by parsing its boxes (ISO/IEC 14496-12, and
//! Apple's QuickTime File Format for the `mdta` metadata), so resuming needs no ffprobe.
//!
//! Only the top-level box headers are read from the file (seeking past `mdat`), then `moov`
//! whole (it holds the index, a few hundred KB at most for our clips); the `moov` may sit before
//! the media data (`+faststart`) or after it. Read:
//! - metadata: `moov/udta/meta` (as ffmpeg's `+use_metadata_tags` writes it) or `moov/meta`
//!   (as Apple writes it), with `hdlr` type `mdta`, a `keys` box naming each key
//!   (namespace `mdta`) and an `ilst` whose children are typed by the 1-based key index and hold
//!   a `data` box (type 1 = UTF-8, then a 4-byte locale, then the text). The `meta` box is a
//!   full box (4 bytes of version/flags) in ISO files and a plain box in QuickTime ones; both
//!   are accepted. iTunes-style metadata (`hdlr` `mdir`) has no `keys` and is ignored.
//! - the first video track (`mdia/hdlr` type `vide`): width and height from `tkhd` (16.16 fixed
//!   point, the last 8 bytes of the box), the frame count from `stbl/stsz`, and the frame rate
//!   from `mdhd`'s timescale over `stts`'s sample delta when all samples share one delta.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::png::{PARAMETERS_KEY, RECORD_KEY};
use super::record::ImageRecord;
use super::video::{Fps, OutputKind, OutputMetadata};
use super::OutputError;

/// Refuse a `moov` larger than this (a corrupt size would otherwise allocate it).
const MAX_MOOV: u64 = 256 << 20;

/// The boxes an MP4 (ISO `ftyp` first) or QuickTime file may start with.
const FIRST_BOXES: [&[u8; 4]; 8] = [
    b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot",
];

/// One box: its type and its payload (after the size and type fields).
#[derive(Debug, Clone, Copy)]
struct Mp4Box<'a> {
    kind: [u8; 4],
    body: &'a [u8],
}

fn fourcc(k: &[u8; 4]) -> String {
    k.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The boxes laid one after another in `data` (a file's part already in memory).
fn children(data: &[u8]) -> Result<Vec<Mp4Box<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        let (size32, kind) = match (be32(rest, 0), rest.get(4..8)) {
            (Some(s), Some(k)) => (s, <[u8; 4]>::try_from(k).expect("4 bytes")),
            _ => return Err(format!("a box header at byte {at} is cut off")),
        };
        let (header, size) = match size32 {
            0 => (8, rest.len() as u64),
            1 => match be64(rest, 8) {
                Some(s) => (16, s),
                None => {
                    return Err(format!(
                        "the `{}` box's 64-bit size is cut off",
                        fourcc(&kind)
                    ))
                }
            },
            s => (8, u64::from(s)),
        };
        if size < header as u64 || size > rest.len() as u64 {
            return Err(format!(
                "the `{}` box at byte {at} says {size} bytes, but {} remain",
                fourcc(&kind),
                rest.len()
            ));
        }
        out.push(Mp4Box {
            kind,
            body: &rest[header..size as usize],
        });
        at += size as usize;
    }
    Ok(out)
}

fn child<'a>(boxes: &[Mp4Box<'a>], kind: &[u8; 4]) -> Option<Mp4Box<'a>> {
    boxes.iter().find(|b| &b.kind == kind).copied()
}

/// The path of boxes `kinds` below `body`.
fn find<'a>(body: &'a [u8], kinds: &[&[u8; 4]]) -> Result<Option<Mp4Box<'a>>, String> {
    let mut cur = Mp4Box {
        kind: *b"root",
        body,
    };
    for k in kinds {
        match child(&children(cur.body)?, k) {
            Some(b) => cur = b,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// Reads `path`'s top-level boxes and returns the `moov` box's payload.
fn read_moov(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let mut at = 0u64;
    let mut first = true;
    while at < len {
        let mut head = [0u8; 16];
        let n = (len - at).min(16) as usize;
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut head[..n]))
            .map_err(|e| format!("cannot read byte {at}: {e}"))?;
        if n < 8 {
            return Err(format!("{n} stray bytes at its end (byte {at})"));
        }
        let kind: [u8; 4] = head[4..8].try_into().expect("4 bytes");
        if first && !FIRST_BOXES.contains(&&kind) {
            return Err(format!(
                "it does not start with an MP4 box (found `{}`): not an MP4 file",
                fourcc(&kind)
            ));
        }
        first = false;
        let (header, size) = match be32(&head, 0).expect("8 bytes read") {
            0 => (8u64, len - at),
            1 if n == 16 => (16, be64(&head, 8).expect("16 bytes read")),
            1 => {
                return Err(format!(
                    "the `{}` box's 64-bit size is cut off",
                    fourcc(&kind)
                ))
            }
            s => (8, u64::from(s)),
        };
        if size < header || size > len - at {
            return Err(format!(
                "the top-level `{}` box at byte {at} says {size} bytes, but {} remain (a cut-off file?)",
                fourcc(&kind),
                len - at
            ));
        }
        if &kind == b"moov" {
            if size > MAX_MOOV {
                return Err(format!("its `moov` box is {size} bytes, implausibly large"));
            }
            let mut body = vec![0u8; (size - header) as usize];
            file.seek(SeekFrom::Start(at + header))
                .and_then(|_| file.read_exact(&mut body))
                .map_err(|e| format!("cannot read its `moov` box: {e}"))?;
            return Ok(body);
        }
        at += size;
    }
    Err("it has no `moov` box (not an MP4 file, or one whose writing did not finish)".into())
}

/// A `meta` box's children; ISO's `meta` is a full box, QuickTime's is not.
fn meta_children(meta: &[u8]) -> Result<Vec<Mp4Box<'_>>, String> {
    let quicktime = meta.get(4..8) == Some(b"hdlr");
    children(if quicktime {
        meta
    } else {
        meta.get(4..).unwrap_or(&[])
    })
}

/// The UTF-8 `mdta` entries of a `meta` box, in `keys` order.
fn mdta_entries(meta: &[u8]) -> Result<Vec<(String, String)>, String> {
    let boxes = meta_children(meta)?;
    // hdlr: version/flags(4) pre_defined(4) handler_type(4)…
    let handler = child(&boxes, b"hdlr").and_then(|h| h.body.get(8..12));
    let (Some(b"mdta"), Some(keys), Some(ilst)) =
        (handler, child(&boxes, b"keys"), child(&boxes, b"ilst"))
    else {
        return Ok(Vec::new());
    };
    // keys: version/flags(4) entry_count(4), then entries of size(4) namespace(4) name.
    let count = be32(keys.body, 4).ok_or("its `keys` box is cut off")?;
    let mut names = Vec::new();
    let mut at = 8usize;
    for i in 0..count {
        let size = be32(keys.body, at)
            .ok_or(format!("key {} of its `keys` box is cut off", i + 1))?
            as usize;
        let entry = keys
            .body
            .get(at..at.saturating_add(size))
            .filter(|_| size >= 8)
            .ok_or(format!("key {} of its `keys` box is cut off", i + 1))?;
        names.push(
            (&entry[4..8] == b"mdta").then(|| String::from_utf8_lossy(&entry[8..]).into_owned()),
        );
        at += size;
    }
    let mut out = Vec::new();
    for item in children(ilst.body)? {
        let index = u32::from_be_bytes(item.kind) as usize;
        let Some(Some(name)) = index.checked_sub(1).and_then(|i| names.get(i)) else {
            continue;
        };
        for data in children(item.body)?.iter().filter(|b| &b.kind == b"data") {
            // data: type(4: a 0 byte, then the 24-bit well-known type) locale(4) value.
            let (Some(kind), Some(value)) = (be32(data.body, 0), data.body.get(8..)) else {
                return Err(format!("the `data` box of its `{name}` tag is cut off"));
            };
            if kind == 1 {
                let text = String::from_utf8(value.to_vec())
                    .map_err(|_| format!("its `{name}` tag is not valid UTF-8"))?;
                out.push((name.clone(), text));
            }
        }
    }
    Ok(out)
}

/// Facts about the first video track.
#[derive(Debug, Default, PartialEq)]
struct VideoTrack {
    width: u32,
    height: u32,
    frames: u32,
    fps: Option<Fps>,
}

fn video_track(moov: &[u8]) -> Result<Option<VideoTrack>, String> {
    for trak in children(moov)?.iter().filter(|b| &b.kind == b"trak") {
        let handler = find(trak.body, &[b"mdia", b"hdlr"])?;
        if handler.and_then(|h| h.body.get(8..12)) != Some(b"vide") {
            continue;
        }
        let cut = |what: &str| format!("the video track's `{what}` box is cut off");
        let tkhd = find(trak.body, &[b"tkhd"])?.ok_or("the video track has no `tkhd` box")?;
        let n = tkhd.body.len();
        if n < 84 {
            return Err(cut("tkhd"));
        }
        let (width, height) = (
            be32(tkhd.body, n - 8).expect("length checked") >> 16,
            be32(tkhd.body, n - 4).expect("length checked") >> 16,
        );
        let stbl = find(trak.body, &[b"mdia", b"minf", b"stbl"])?;
        let stbl = stbl
            .map(|s| children(s.body))
            .transpose()?
            .unwrap_or_default();
        // stsz: version/flags(4) sample_size(4) sample_count(4).
        let frames = match child(&stbl, b"stsz") {
            Some(b) => be32(b.body, 8).ok_or_else(|| cut("stsz"))?,
            None => 0,
        };
        // mdhd: version/flags(4), then v0: ctime(4) mtime(4) timescale(4); v1: 8, 8, 4.
        let timescale = match find(trak.body, &[b"mdia", b"mdhd"])? {
            Some(b) => {
                let at = if b.body.first() == Some(&1) { 20 } else { 12 };
                Some(be32(b.body, at).ok_or_else(|| cut("mdhd"))?)
            }
            None => None,
        };
        // stts: version/flags(4) entry_count(4), then (sample_count, sample_delta) pairs.
        let mut delta = None;
        if let Some(b) = child(&stbl, b"stts") {
            let count = be32(b.body, 4).ok_or_else(|| cut("stts"))?;
            let deltas: Option<Vec<u32>> = (0..count as usize)
                .map(|i| be32(b.body, 12 + 8 * i))
                .collect();
            let deltas = deltas.ok_or_else(|| cut("stts"))?;
            if let Some(&d) = deltas.first() {
                if deltas.iter().all(|&x| x == d) {
                    delta = Some(d);
                }
            }
        }
        let fps = match (timescale, delta) {
            (Some(t), Some(d)) => Fps::new(t, d).ok(),
            _ => None,
        };
        return Ok(Some(VideoTrack {
            width,
            height,
            frames,
            fps,
        }));
    }
    Ok(None)
}

/// Reads the `parameters` and `mgpu` metadata of an MP4 file and its video track's size,
/// frame count and rate (see the module docs).
pub fn read_mp4_metadata(path: &Path) -> Result<OutputMetadata, OutputError> {
    let fail = |reason: String| OutputError::Mp4 {
        path: path.to_path_buf(),
        reason,
    };
    let moov = read_moov(path).map_err(fail)?;
    parse_moov(&moov, path)
}

fn parse_moov(moov: &[u8], path: &Path) -> Result<OutputMetadata, OutputError> {
    let fail = |reason: String| OutputError::Mp4 {
        path: path.to_path_buf(),
        reason,
    };
    let mut entries = Vec::new();
    for at in [&[b"udta", b"meta"][..], &[b"meta"][..]] {
        if let Some(meta) = find(moov, at).map_err(fail)? {
            entries.extend(mdta_entries(meta.body).map_err(fail)?);
        }
    }
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let parameters = get(PARAMETERS_KEY).map(|t| {
        t.parse()
            .unwrap_or_else(|e: std::convert::Infallible| match e {})
    });
    let record = get(RECORD_KEY)
        .map(|t| serde_json::from_str::<ImageRecord>(t))
        .transpose()
        .map_err(|e| OutputError::Mp4Record {
            path: path.to_path_buf(),
            source: e,
        })?;
    let track = video_track(moov).map_err(fail)?.unwrap_or_default();
    Ok(OutputMetadata {
        kind: OutputKind::Mp4,
        width: track.width,
        height: track.height,
        frames: track.frames,
        fps: track.fps,
        parameters,
        record,
    })
}

#[cfg(test)]
#[path = "mp4box_tests.rs"]
mod tests;
