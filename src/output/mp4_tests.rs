//! MP4 writer tests: a real ffmpeg round trip (needs ffmpeg with libx264: skipped with a note
//! when there is none, so `cargo test` passes on a fresh machine; CI installs ffmpeg and sets
//! `MGPU_REQUIRE_FFMPEG=1`, which makes a missing ffmpeg a failure), and fake-ffmpeg scripts
//! for the process plumbing and atomicity.

use super::super::record::tests::example;
use super::super::video::{read_output_metadata, write_video, OutputKind};
use super::super::Infotext;
use super::*;

/// Set (by `.ci/run`, after installing ffmpeg) to make a missing ffmpeg fail the tests that
/// need a real one instead of skipping them.
const REQUIRE_ENV: &str = "MGPU_REQUIRE_FFMPEG";

fn real_ffmpeg() -> Option<Ffmpeg> {
    match Ffmpeg::locate() {
        Ok(f) => Some(f),
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty()) => {
            panic!("this test needs a real ffmpeg with libx264 ({REQUIRE_ENV} is set): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the MP4 round trip needs ffmpeg with libx264: {e}");
            None
        }
    }
}

/// A smooth moving gradient (H.264 keeps it close) with an even size.
fn smooth(w: u32, h: u32, n: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|t| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (40 + x * 2 + t * 3) as u8,
                    (60 + y * 3 + t) as u8,
                    (200 - x - y - t * 2) as u8,
                ])
            })
        })
        .collect()
}

/// Decodes `path` back to rgb24 with the BT.709 limited-range matrix it was tagged with.
fn decode(ffmpeg: &Ffmpeg, path: &Path) -> Vec<u8> {
    let out = Command::new(&ffmpeg.path)
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(path)
        .args([
            "-vf",
            "scale=in_color_matrix=bt709:in_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24",
            "-f",
            "rawvideo",
            "pipe:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut at = 0;
    let mut kinds = Vec::new();
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        assert!(size >= 8);
        at += size;
    }
    kinds
}

#[test]
fn mp4_round_trip_with_real_ffmpeg() {
    let Some(ffmpeg) = real_ffmpeg() else { return };
    assert!(!ffmpeg.version.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("videos/fox.mp4");
    let frames = smooth(64, 48, 12);
    let mut record = example();
    record.prompt = "a fox runs through snow — ☃, \"quoted\"\nsecond line".into();
    record.job_hash = Some("0123456789abcdef".into());
    let fps = Fps::integer(16).unwrap();
    write_video(&path, &frames, fps, &record).unwrap();

    let m = read_output_metadata(&path).unwrap();
    assert_eq!(m.kind, OutputKind::Mp4);
    assert_eq!(
        (m.width, m.height, m.frames, m.fps),
        (64, 48, 12, Some(fps))
    );
    assert_eq!(m.record.as_ref(), Some(&record));
    assert_eq!(m.parameters, Some(Infotext::from_record(&record)));

    // The pixels survive H.264 at CRF 17 closely (smooth content).
    let back = decode(&ffmpeg, &path);
    let want: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().clone()).collect();
    assert_eq!(back.len(), want.len(), "frame count or size changed");
    let diffs: Vec<u32> = back
        .iter()
        .zip(&want)
        .map(|(a, b)| u32::from(a.abs_diff(*b)))
        .collect();
    let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
    let max = *diffs.iter().max().unwrap();
    eprintln!("mp4 round trip: mean abs error {mean:.3}, max {max} (of 255)");
    assert!(mean < 1.5 && max <= 12, "mean {mean}, max {max}");

    // faststart: the index before the media data.
    let bytes = std::fs::read(&path).unwrap();
    let boxes = top_level_boxes(&bytes);
    let pos = |k: &str| boxes.iter().position(|b| b == k).unwrap();
    assert!(
        pos("ftyp") < pos("moov") && pos("moov") < pos("mdat"),
        "{boxes:?}"
    );

    // Rewriting replaces the file whole and leaves no temporary behind.
    let mut other = record.clone();
    other.seed = 99;
    write_mp4(&path, &frames[..4], Fps::new(30000, 1001).unwrap(), &other).unwrap();
    let m = read_output_metadata(&path).unwrap();
    assert_eq!((m.frames, m.fps), (4, Some(Fps::new(30000, 1001).unwrap())));
    assert_eq!(m.record.unwrap().seed, 99);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("fox.mp4")]);
}

#[test]
fn odd_sizes_are_refused_before_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let e = write_mp4(
        &path,
        &smooth(65, 48, 2),
        Fps::integer(16).unwrap(),
        &example(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "H.264 MP4 (yuv420p) needs an even width and height, but the video is 65x48: make both even, or write an animated PNG (.png) instead");
    let e = write_mp4(&path, &[], Fps::integer(16).unwrap(), &example()).unwrap_err();
    assert_eq!(e.to_string(), "a video needs at least one frame, got none");
    assert!(!path.exists());
}

#[test]
fn stderr_tail() {
    let text: String = (1..=20).map(|i| format!("line {i}\n\n")).collect();
    assert_eq!(
        tail(text.as_bytes()),
        (9..=20)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let long = "é".repeat(3000);
    let t = tail(long.as_bytes());
    assert!(
        t.starts_with('…') && t.len() <= 2000 + '…'.len_utf8(),
        "{}",
        t.len()
    );
    assert_eq!(tail(b""), "");
}

#[cfg(unix)]
mod fake {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A shell script standing in for ffmpeg: answers `-version` and `-encoders`, and runs
    /// `body` (with `$out` = the output path, the last argument) for an encode.
    fn script(dir: &Path, name: &str, encoders: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        let text = format!(
            "#!/bin/sh\ncase \"$2\" in\n  -version) echo 'ffmpeg version 9.9-fake Copyright (c) fakers'; exit 0;;\n  -encoders) printf 'Encoders:\\n{encoders}\\n'; exit 0;;\nesac\nfor a; do out=\"$a\"; done\n{body}\n"
        );
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    const X264: &str = " V....D libx264              libx264 H.264 / AVC";

    /// `Ffmpeg::at`, retrying while another test thread's fork still holds the new script
    /// open for writing (ETXTBSY).
    fn probe(p: &Path) -> Result<Ffmpeg, OutputError> {
        for _ in 0..200 {
            match Ffmpeg::at(p) {
                Err(e) if e.to_string().contains("busy") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r,
            }
        }
        Ffmpeg::at(p)
    }

    #[test]
    fn probing_and_locating() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = script(d, "ffmpeg", X264, "exit 0");
        let f = probe(&good).unwrap();
        assert_eq!(
            (f.path.as_path(), f.version.as_str()),
            (good.as_path(), "9.9-fake")
        );

        let no264 = script(d, "no264", " V....D libx265  H.265", "exit 0");
        let e = probe(&no264).unwrap_err().to_string();
        assert!(
            e.contains("(ffmpeg 9.9-fake) was built without the libx264 encoder"),
            "{e}"
        );
        assert!(e.starts_with("writing MP4 needs ffmpeg: "), "{e}");

        let echo = d.join("echo-ffmpeg");
        std::fs::write(&echo, "#!/bin/sh\necho hello\n").unwrap();
        std::fs::set_permissions(&echo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = probe(&echo).unwrap_err().to_string();
        assert!(
            e.contains("does not answer `-version` like ffmpeg (first line: \"hello\")"),
            "{e}"
        );

        // MGPU_FFMPEG wins over PATH, with no fall-back when it is wrong.
        let f = locate_with(Some(good.clone().into()), Some("/nonexistent".into())).unwrap();
        assert_eq!(f.path, good);
        let e = locate_with(Some("/nope/ffmpeg".into()), Some(d.as_os_str().into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("writing MP4 needs ffmpeg: MGPU_FFMPEG names /nope/ffmpeg, but /nope/ffmpeg cannot be run ("), "{e}");
        assert!(e.ends_with("or set MGPU_FFMPEG to its path, or write an animated PNG (.png), which needs nothing"), "{e}");

        // PATH: the first executable `ffmpeg`; a non-executable one is passed over.
        let plain = d.join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join("ffmpeg"), "not executable").unwrap();
        let path_var = std::env::join_paths([plain.as_path(), d]).unwrap();
        let f = locate_with(None, Some(path_var)).unwrap();
        assert_eq!(f.path, good);
        let e = locate_with(Some("".into()), Some(plain.as_os_str().into()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("writing MP4 needs ffmpeg: no `ffmpeg` program on PATH; install it (Debian/Ubuntu: `apt-get install ffmpeg`)"), "{e}");
    }

    #[test]
    fn frames_are_piped_and_the_target_appears_only_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let target = d.join("out/clip.mp4");
        let log = d.join("log");
        // Record the output path, the target's state while "encoding" and the process group,
        // then copy stdin.
        let body = format!(
            "printf '%s\\n' \"$out\" > {log}\ncat {target} >> {log} 2>/dev/null || echo absent >> {log}\ncut -d' ' -f5 /proc/$$/stat >> {log}\ncat > \"$out\"",
            log = log.display(),
            target = target.display()
        );
        let ff = probe(&script(d, "ffmpeg", X264, &body)).unwrap();
        let frames = smooth(8, 4, 3);
        let fps = Fps::integer(16).unwrap();
        ff.write_mp4(&target, &frames, fps, &example()).unwrap();
        let raw: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().clone()).collect();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            raw,
            "rgb24 frames in order"
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        let mut lines = logged.lines();
        let tmp = PathBuf::from(lines.next().unwrap());
        assert_eq!(
            tmp.parent(),
            target.parent(),
            "the temporary file is beside the target"
        );
        let tmp_name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            tmp_name.starts_with(".clip.mp4.") && tmp_name.ends_with(".tmp"),
            "{tmp_name}"
        );
        assert_eq!(lines.next(), Some("absent"), "no target while ffmpeg runs");
        // Its own process group (a terminal's Ctrl-C must not reach it).
        let pgid: i32 = lines.next().unwrap().trim().parse().unwrap();
        // SAFETY: getpgrp takes no arguments and cannot fail.
        assert_ne!(pgid, unsafe { libc::getpgrp() });
        assert!(!tmp.exists());

        // A rewrite: while ffmpeg runs, the target still holds the old file whole.
        std::fs::write(&target, "OLD\n").unwrap();
        ff.write_mp4(&target, &frames, fps, &example()).unwrap();
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(logged.lines().nth(1), Some("OLD"));
        assert_eq!(std::fs::read(&target).unwrap(), raw);
        assert_eq!(
            std::fs::read_dir(target.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn failures_report_stderr_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let target = d.join("clip.mp4");
        std::fs::write(&target, "OLD").unwrap();
        let body = "head -c 100 > \"$out\"\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14; do echo \"noise $i\" >&2; done\necho '[libx264 @ 0x1] broken: no space left' >&2\nexit 3";
        let ff = probe(&script(d, "ffmpeg", X264, body)).unwrap();
        let frames = vec![RgbImage::new(256, 256); 4]; // more than a pipe buffer: ffmpeg stops reading
        let e = ff
            .write_mp4(&target, &frames, Fps::integer(16).unwrap(), &example())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "ffmpeg ({}) failed writing {} (exit status: 3); its last words: noise 4 | noise 5",
                ff.path.display(),
                target.display()
            )),
            "{e}"
        );
        assert!(
            e.ends_with("noise 14 | [libx264 @ 0x1] broken: no space left"),
            "{e}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"OLD");
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
