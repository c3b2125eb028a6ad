//! MP4 box parser tests on hand-built files (the layouts ffmpeg and Apple write).

use super::super::record::tests::example;
use super::super::Infotext;
use super::*;

fn bx(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend(body);
    out
}

/// A box with a 64-bit size field.
fn bx64(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = 1u32.to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend(((body.len() + 16) as u64).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn hdlr(handler: &[u8; 4]) -> Vec<u8> {
    bx(b"hdlr", &[&u32s(&[0, 0]), handler, &[0; 12], b"Handler\0"])
}

/// `meta` with `mdta` keys and UTF-8 values; `iso` adds the full-box version/flags.
fn mdta_meta(iso: bool, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut keys = u32s(&[0, entries.len() as u32]);
    for (name, _, _) in entries {
        keys.extend(u32s(&[name.len() as u32 + 8]));
        keys.extend_from_slice(b"mdta");
        keys.extend_from_slice(name.as_bytes());
    }
    let mut ilst = Vec::new();
    for (i, (_, kind, value)) in entries.iter().enumerate() {
        let data = bx(b"data", &[&u32s(&[*kind, 0]), value]);
        ilst.extend(bx(&(i as u32 + 1).to_be_bytes(), &[&data]));
    }
    let vf: &[u8] = if iso { &[0, 0, 0, 0] } else { &[] };
    bx(
        b"meta",
        &[
            vf,
            &hdlr(b"mdta"),
            &bx(b"keys", &[&keys]),
            &bx(b"ilst", &[&ilst]),
        ],
    )
}

fn tkhd(w: u32, h: u32) -> Vec<u8> {
    // v0: version/flags, ctime, mtime, track id, reserved, duration, 8 reserved, layer,
    // group, volume, reserved (2 each), 36-byte matrix, then width and height (16.16).
    bx(b"tkhd", &[&[0; 76], &u32s(&[w << 16, h << 16])])
}

fn mdhd(v1: bool, timescale: u32) -> Vec<u8> {
    if v1 {
        bx(
            b"mdhd",
            &[&u32s(&[1 << 24, 0, 0, 0, 0, timescale, 0, 0]), &[0; 4]],
        )
    } else {
        bx(b"mdhd", &[&u32s(&[0, 0, 0, timescale, 0]), &[0; 4]])
    }
}

fn trak(
    handler: &[u8; 4],
    w: u32,
    h: u32,
    mdhd_box: &[u8],
    stts: &[(u32, u32)],
    n: u32,
) -> Vec<u8> {
    let mut stts_body = u32s(&[0, stts.len() as u32]);
    for (c, d) in stts {
        stts_body.extend(u32s(&[*c, *d]));
    }
    let mut stsz = u32s(&[0, 0, n]);
    stsz.extend(u32s(&vec![100; n as usize]));
    let stbl = bx(
        b"stbl",
        &[&bx(b"stts", &[&stts_body]), &bx(b"stsz", &[&stsz])],
    );
    let minf = bx(b"minf", &[&bx(b"vmhd", &[&[0; 12]]), &stbl]);
    let mdia = bx(b"mdia", &[mdhd_box, &hdlr(handler), &minf]);
    bx(b"trak", &[&tkhd(w, h), &mdia])
}

fn ftyp() -> Vec<u8> {
    bx(b"ftyp", &[b"isom", &u32s(&[512]), b"isomiso2avc1mp41"])
}

fn write(dir: &Path, name: &str, parts: &[&[u8]]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, parts.concat()).unwrap();
    p
}

#[test]
fn ffmpeg_layout_moov_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut record = example();
    record.prompt = "a fox in snow — ☃".into();
    let json = serde_json::to_string(&record).unwrap();
    let params = Infotext::from_record(&record).to_string();
    let meta = mdta_meta(
        true,
        &[
            ("parameters", 1, params.as_bytes()),
            ("mgpu", 1, json.as_bytes()),
            ("encoder", 1, b"Lavf59.27.100"),
        ],
    );
    let moov = bx(
        b"moov",
        &[
            &bx(b"mvhd", &[&[0; 100]]),
            &trak(b"vide", 832, 480, &mdhd(false, 16384), &[(81, 1024)], 81),
            &bx(b"udta", &[&meta]),
        ],
    );
    let p = write(
        dir.path(),
        "a.mp4",
        &[&ftyp(), &moov, &bx(b"mdat", &[&[7; 500]])],
    );
    let m = read_mp4_metadata(&p).unwrap();
    assert_eq!(m.kind, OutputKind::Mp4);
    assert_eq!((m.width, m.height, m.frames), (832, 480, 81));
    assert_eq!(m.fps, Some(Fps::integer(16).unwrap()));
    assert_eq!(m.record, Some(record.clone()));
    assert_eq!(m.parameters, Some(Infotext::from_record(&record)));
}

#[test]
fn quicktime_layout_moov_last_64_bit_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_string(&example()).unwrap();
    // QuickTime meta (no version/flags) directly in moov; a sound track before the video
    // track; mdhd version 1; NTSC rate; the keys in another order plus one that is not UTF-8
    // text (type 21, a big-endian integer) and one in another namespace.
    let mut meta = mdta_meta(
        false,
        &[
            ("com.apple.quicktime.rating", 21, &[0, 5]),
            ("other", 1, b"not ours"),
            ("mgpu", 1, json.as_bytes()),
        ],
    );
    // Move the `other` key to another namespace by hand: it must be ignored.
    let at = meta.windows(9).position(|w| w == b"mdtaother").unwrap();
    meta[at..at + 4].copy_from_slice(b"udta");
    let moov = bx(
        b"moov",
        &[
            &trak(b"soun", 0, 0, &mdhd(false, 48000), &[(10, 1024)], 10),
            &trak(b"vide", 1280, 720, &mdhd(true, 30000), &[(5, 1001)], 5),
            &meta,
        ],
    );
    let p = write(
        dir.path(),
        "b.mp4",
        &[&ftyp(), &bx64(b"mdat", &[1; 64]), &bx(b"free", &[]), &moov],
    );
    let m = read_mp4_metadata(&p).unwrap();
    assert_eq!((m.width, m.height, m.frames), (1280, 720, 5));
    assert_eq!(m.fps, Some(Fps::new(30000, 1001).unwrap()));
    assert_eq!(m.record, Some(example()));
    assert_eq!(m.parameters, None);

    // A last box of size 0 runs to the end of the file.
    let mut moov0 = moov.clone();
    moov0[..4].copy_from_slice(&[0; 4]);
    let p = write(
        dir.path(),
        "c.mp4",
        &[&ftyp(), &bx(b"mdat", &[&[1; 8]]), &moov0],
    );
    assert_eq!(read_mp4_metadata(&p).unwrap().record, Some(example()));
}

#[test]
fn other_metadata_and_variable_rate() {
    let dir = tempfile::tempdir().unwrap();
    // iTunes-style metadata (`mdir`, no keys): ignored, not an error.
    let itunes = bx(
        b"meta",
        &[
            &[0; 4],
            &hdlr(b"mdir"),
            &bx(
                b"ilst",
                &[&bx(
                    b"\xa9cmt",
                    &[&bx(b"data", &[&u32s(&[1, 0]), b"hello"])],
                )],
            ),
        ],
    );
    let moov = bx(
        b"moov",
        &[
            &trak(
                b"vide",
                64,
                48,
                &mdhd(false, 90000),
                &[(3, 3000), (1, 6000)],
                4,
            ),
            &bx(b"udta", &[&itunes]),
        ],
    );
    let p = write(dir.path(), "d.mp4", &[&ftyp(), &moov]);
    let m = read_mp4_metadata(&p).unwrap();
    assert_eq!((m.width, m.height, m.frames, m.fps), (64, 48, 4, None));
    assert_eq!((m.parameters, m.record), (None, None));

    // No video track: zero size and frames, metadata still read.
    let meta = mdta_meta(
        true,
        &[("parameters", 1, b"a cat\nSteps: 20, Seed: 1, Size: 8x8")],
    );
    let moov = bx(b"moov", &[&bx(b"udta", &[&meta])]);
    let p = write(dir.path(), "e.mp4", &[&ftyp(), &moov]);
    let m = read_mp4_metadata(&p).unwrap();
    assert_eq!((m.width, m.height, m.frames, m.fps), (0, 0, 0, None));
    let params = m.parameters.unwrap();
    assert_eq!(params.prompt, "a cat");
    assert_eq!(params.get("Seed"), Some("1"));
}

fn err(p: &Path) -> String {
    read_mp4_metadata(p).unwrap_err().to_string()
}

#[test]
fn broken_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = err(&d.join("missing.mp4"));
    assert!(
        e.starts_with("cannot read MP4 ") && e.contains("missing.mp4: cannot open it"),
        "{e}"
    );

    let p = write(d, "text.mp4", &[b"hello, this is not a video at all"]);
    assert!(
        err(&p).ends_with(
            "text.mp4: it does not start with an MP4 box (found `o, t`): not an MP4 file"
        ),
        "{}",
        err(&p)
    );

    // Killed before ffmpeg wrote the index: ftyp and a partial mdat, no moov.
    let p = write(d, "nomoov.mp4", &[&ftyp(), &bx(b"mdat", &[&[0; 32]])]);
    assert!(
        err(&p).ends_with(
            "it has no `moov` box (not an MP4 file, or one whose writing did not finish)"
        ),
        "{}",
        err(&p)
    );

    // Cut off inside the mdat.
    let mut cut = ftyp();
    cut.extend(bx(b"mdat", &[&[0; 32]]));
    cut.truncate(cut.len() - 5);
    let p = write(d, "cut.mp4", &[&cut]);
    assert!(
        err(&p).contains(
            "the top-level `mdat` box at byte 32 says 40 bytes, but 35 remain (a cut-off file?)"
        ),
        "{}",
        err(&p)
    );

    // Inside moov: a child box longer than its parent.
    let mut bad = bx(b"udta", &[&mdta_meta(true, &[("mgpu", 1, b"{}")])]);
    bad[3] += 10;
    let p = write(d, "inner.mp4", &[&ftyp(), &bx(b"moov", &[&bad])]);
    assert!(
        err(&p).contains("the `udta` box at byte 0 says"),
        "{}",
        err(&p)
    );

    // A keys box whose entry overruns it.
    let mut meta = mdta_meta(true, &[("mgpu", 1, b"{}")]);
    let k = meta.windows(4).position(|w| w == b"keys").unwrap();
    meta[k + 11] = 2; // entry_count's low byte: 2 keys, only 1 there
    let p = write(
        d,
        "keys.mp4",
        &[&ftyp(), &bx(b"moov", &[&bx(b"udta", &[&meta])])],
    );
    assert!(
        err(&p).contains("key 2 of its `keys` box is cut off"),
        "{}",
        err(&p)
    );

    // A record that is not one.
    let meta = mdta_meta(true, &[("mgpu", 1, br#"{"format": 1}"#)]);
    let p = write(
        d,
        "rec.mp4",
        &[&ftyp(), &bx(b"moov", &[&bx(b"udta", &[&meta])])],
    );
    assert!(
        err(&p).contains(
            "rec.mp4 has an `mgpu` metadata tag that is not a valid record: missing field"
        ),
        "{}",
        err(&p)
    );

    // Text that is not UTF-8.
    let meta = mdta_meta(true, &[("parameters", 1, &[0xff, 0xfe])]);
    let p = write(
        d,
        "utf.mp4",
        &[&ftyp(), &bx(b"moov", &[&bx(b"udta", &[&meta])])],
    );
    assert!(
        err(&p).ends_with("its `parameters` tag is not valid UTF-8"),
        "{}",
        err(&p)
    );
}

#[test]
fn box_sequences() {
    let data = [bx(b"free", &[&[1, 2]]), bx64(b"skip", &[3])].concat();
    let b = children(&data).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!((&b[0].kind, b[0].body), (b"free", &[1u8, 2][..]));
    assert_eq!((&b[1].kind, b[1].body), (b"skip", &[3u8][..]));
    assert!(children(&data[..5]).unwrap_err().contains("cut off"));
    let tiny = [0, 0, 0, 4, b'f', b'r', b'e', b'e'];
    assert!(children(&tiny).unwrap_err().contains("says 4 bytes"));
    assert!(children(&[]).unwrap().is_empty());
}
