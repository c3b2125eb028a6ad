//! PNG files with generation metadata, written atomically.
//!
//! A file holds, before the image data: a `parameters` text chunk with the A1111-style
//! [`Infotext`] and an `mgpu` text chunk with the [`ImageRecord`] as JSON. Each is a `tEXt`
//! chunk when its text is Latin-1 and an uncompressed `iTXt` (UTF-8) chunk otherwise — the
//! rule A1111 follows through PIL's `PngInfo.add_text`. Encoding settings are fixed (8-bit RGB,
//! `Compression::Balanced`, adaptive filter), so the same pixels and record give the same bytes
//! with the same `png` crate version.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use image::RgbImage;

use super::infotext::Infotext;
use super::record::ImageRecord;
use super::video::Fps;
use super::OutputError;

/// The A1111/Forge/civitai text chunk keyword.
pub const PARAMETERS_KEY: &str = "parameters";
/// mgpu's JSON record chunk keyword.
pub const RECORD_KEY: &str = "mgpu";

/// Encodes `image` as PNG with the record's `parameters` and `mgpu` chunks.
pub fn encode_png(image: &RgbImage, record: &ImageRecord) -> Result<Vec<u8>, OutputError> {
    encode_png_with_text(image, &record_texts(record))
}

/// The two metadata entries of every output, in file order: `parameters` (the record's
/// [`Infotext`]) and `mgpu` (the record as JSON).
pub(crate) fn record_texts(record: &ImageRecord) -> [(&'static str, String); 2] {
    let record_json = serde_json::to_string(record).expect("an ImageRecord always serialises");
    [
        (PARAMETERS_KEY, Infotext::from_record(record).to_string()),
        (RECORD_KEY, record_json),
    ]
}

/// An encoder with mgpu's fixed settings (8-bit RGB, `Compression::Balanced`, adaptive filter)
/// and the given text chunks (Latin-1 → `tEXt`, else `iTXt`), shared by PNG and APNG.
pub(crate) fn encoder<W: Write>(
    out: W,
    (w, h): (u32, u32),
    texts: &[(&str, String)],
) -> Result<png::Encoder<'static, W>, OutputError> {
    let mut enc = png::Encoder::new(out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Balanced);
    enc.set_filter(png::Filter::Adaptive);
    for (key, text) in texts {
        let r = if text.chars().all(|c| u32::from(c) <= 0xFF) {
            enc.add_text_chunk(key.to_string(), text.clone())
        } else {
            enc.add_itxt_chunk(key.to_string(), text.clone())
        };
        r.map_err(OutputError::PngEncode)?;
    }
    Ok(enc)
}

/// Encodes `image` with the given text chunks (Latin-1 → `tEXt`, else `iTXt`).
pub fn encode_png_with_text(
    image: &RgbImage,
    texts: &[(&str, String)],
) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(image.as_raw().len() / 2 + 1024);
    let enc = encoder(&mut out, image.dimensions(), texts)?;
    let mut writer = enc.write_header().map_err(OutputError::PngEncode)?;
    writer
        .write_image_data(image.as_raw())
        .map_err(OutputError::PngEncode)?;
    writer.finish().map_err(OutputError::PngEncode)?;
    Ok(out)
}

/// Writes the PNG to `path` atomically (see [`write_atomic`]).
pub fn write_png(path: &Path, image: &RgbImage, record: &ImageRecord) -> Result<(), OutputError> {
    let bytes = encode_png(image, record)?;
    write_atomic(path, |w| w.write_all(&bytes))
}

/// What [`read_png_metadata`] finds in a PNG (still or animated).
#[derive(Debug, Clone, PartialEq)]
pub struct PngMetadata {
    pub width: u32,
    pub height: u32,
    /// Whether the file is an APNG (has an `acTL` chunk).
    pub animated: bool,
    /// The animation's frame count (`acTL`), 1 for a still PNG.
    pub frames: u32,
    /// The frame rate from the first frame's delay (`fcTL` before the image data), when it
    /// has one and it is a valid [`Fps`].
    pub fps: Option<Fps>,
    /// The `parameters` chunk (any A1111-style writer's), parsed.
    pub parameters: Option<Infotext>,
    /// The `mgpu` chunk, if this file has one.
    pub record: Option<ImageRecord>,
}

/// Reads the `parameters` and `mgpu` chunks back from a PNG or APNG (tEXt, zTXt or iTXt, before
/// or after the image data), with the frame count and rate of an APNG.
pub fn read_png_metadata(path: &Path) -> Result<PngMetadata, OutputError> {
    let file = File::open(path).map_err(|e| OutputError::Io {
        path: path.to_path_buf(),
        op: "open",
        source: e,
    })?;
    let decode = |e: png::DecodingError| OutputError::PngDecode {
        path: path.to_path_buf(),
        source: e,
    };
    let mut reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .map_err(decode)?;
    let animation = reader.info().animation_control;
    // The first frame's fcTL, when the default image is part of the animation.
    let fps = reader.info().frame_control.and_then(|fc| {
        let den = if fc.delay_den == 0 { 100 } else { fc.delay_den };
        Fps::new(u32::from(den), u32::from(fc.delay_num)).ok()
    });
    // Text chunks after the image data are only seen once the image has been read.
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut buf).map_err(decode)?;
    reader.finish().map_err(decode)?;
    let info = reader.info();
    let mut texts: Vec<(String, String)> = Vec::new();
    texts.extend(
        info.uncompressed_latin1_text
            .iter()
            .map(|c| (c.keyword.clone(), c.text.clone())),
    );
    for c in &info.compressed_latin1_text {
        texts.push((c.keyword.clone(), c.get_text().map_err(decode)?));
    }
    for c in &info.utf8_text {
        texts.push((c.keyword.clone(), c.get_text().map_err(decode)?));
    }
    let find = |key: &str| {
        texts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let parameters = find(PARAMETERS_KEY).map(|t| {
        t.parse()
            .unwrap_or_else(|e: std::convert::Infallible| match e {})
    });
    let record = find(RECORD_KEY)
        .map(serde_json::from_str::<ImageRecord>)
        .transpose()
        .map_err(|e| OutputError::Record {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(PngMetadata {
        width: info.width,
        height: info.height,
        animated: animation.is_some(),
        frames: animation.map_or(1, |a| a.num_frames),
        fps: fps.filter(|_| animation.is_some()),
        parameters,
        record,
    })
}

/// Writes a file so that `path` either keeps its old content or has the complete new one: the
/// bytes go to a temporary file in the same folder (created with its parents if needed), which
/// is flushed, `fsync`ed and renamed over `path`; the folder is then `fsync`ed. If `write`
/// fails, the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let staged = Staged::beside(path)?;
    {
        let mut w = BufWriter::new(staged.tmp.as_file());
        write(&mut w).map_err(io_err("write", path))?;
        w.flush().map_err(io_err("write", path))?;
    }
    staged.commit()
}

fn io_err(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let p = p.to_path_buf();
    move |e| OutputError::Io {
        path: p,
        op,
        source: e,
    }
}

/// Creates the folder of `path` (inside `root`) and checks that its real path, symbolic links
/// resolved, is inside `root`'s real path: the template check is textual, and a link such as
/// `out/fox -> /elsewhere` would otherwise carry writes out of the output root. Links that stay
/// inside the root are fine. Call right before writing.
pub fn confine(root: &Path, path: &Path) -> Result<(), OutputError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(root).map_err(io_err("create the output root", root))?;
    let real_root = std::fs::canonicalize(root).map_err(io_err("resolve the output root", root))?;
    let inside = |d: &Path| -> Result<(), OutputError> {
        let real = std::fs::canonicalize(d).map_err(io_err("resolve the folder", d))?;
        if real.starts_with(&real_root) {
            Ok(())
        } else {
            Err(OutputError::Escapes {
                path: path.to_path_buf(),
                real,
                root: root.to_path_buf(),
            })
        }
    };
    // The deepest folder that exists already, checked before any folder is created in it
    // (so no folder is made through a link either).
    let mut existing = dir;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => break,
        }
    }
    if std::fs::symlink_metadata(existing).is_ok() {
        inside(existing)?;
    }
    std::fs::create_dir_all(dir).map_err(io_err("create the folder", dir))?;
    inside(dir)
}

/// An output being written: a temporary file `.NAME.XXXXXX.tmp` beside its final path (the
/// name the queue's stale-file cleanup removes after a kill), removed on drop unless
/// [`Staged::commit`] moves it into place. Shared by every writer of outputs (PNG, animated
/// PNG, MP4 through ffmpeg).
pub(crate) struct Staged {
    pub(crate) tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Staged {
    /// Creates the folder of `path` if needed and the temporary file in it.
    pub(crate) fn beside(path: &Path) -> Result<Staged, OutputError> {
        let name = path.file_name().ok_or_else(|| OutputError::Io {
            path: path.to_path_buf(),
            op: "write",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io_err("create the folder", dir))?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // Outputs get the usual mode (0666 less the umask), not a temporary file's 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = builder
            .tempfile_in(dir)
            .map_err(io_err("create a temporary file in", dir))?;
        Ok(Staged {
            tmp,
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// The temporary file's path (for a writer that opens it by name, like ffmpeg).
    pub(crate) fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// `fsync`s the written file (reopened by name, so a child process's writes count),
    /// renames it over the final path and `fsync`s the folder.
    pub(crate) fn commit(self) -> Result<(), OutputError> {
        let path = self.path.clone();
        File::open(self.tmp.path())
            .and_then(|f| f.sync_all())
            .map_err(io_err("flush to disk", &path))?;
        self.tmp.persist(&path).map_err(|e| OutputError::Io {
            path: path.clone(),
            op: "move into place",
            source: e.error,
        })?;
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("flush the folder", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::example;
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        })
    }

    #[test]
    fn metadata_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/nested/cat.png");
        let img = gradient(32, 16);
        let mut record = example();
        write_png(&path, &img, &record).unwrap();
        let meta = read_png_metadata(&path).unwrap();
        assert_eq!((meta.width, meta.height), (32, 16));
        assert_eq!(meta.record.as_ref(), Some(&record));
        assert_eq!(meta.parameters, Some(Infotext::from_record(&record)));
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded, img);

        // Non-Latin-1 text goes into iTXt and still round-trips.
        record.prompt = "一只猫 on a windowsill — ☀".into();
        write_png(&path, &img, &record).unwrap();
        let meta = read_png_metadata(&path).unwrap();
        assert_eq!(meta.record.unwrap().prompt, record.prompt);
        // The A1111 text adds the LoRA tags after the prompt.
        let params = meta.parameters.unwrap().prompt;
        assert_eq!(params, format!("{} <lora:style:0.8>", record.prompt));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_out_of_the_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("fox")).unwrap();
        let path = root.path().join("fox/a.png");
        let e = confine(root.path(), &path).unwrap_err().to_string();
        assert!(
            e.contains("refusing to write") && e.contains("fox/a.png"),
            "{e}"
        );
        assert!(e.contains("outside the output root"), "{e}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // A deeper folder created through the link is refused too; a link inside is fine.
        assert!(confine(root.path(), &root.path().join("fox/x/y/a.png")).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.path().join("inside")).unwrap();
        confine(root.path(), &root.path().join("inside/b.png")).unwrap();
        confine(root.path(), &root.path().join("new/deep/c.png")).unwrap();
    }

    #[test]
    fn same_input_same_bytes() {
        let img = gradient(64, 64);
        let a = encode_png(&img, &example()).unwrap();
        let b = encode_png(&img, &example()).unwrap();
        assert_eq!(a, b);
        let mut other = example();
        other.seed = 43;
        assert_ne!(encode_png(&img, &other).unwrap(), a);
        // Chunk order: signature, IHDR, then parameters before mgpu, both before IDAT.
        let find = |needle: &[u8]| a.windows(needle.len()).position(|w| w == needle).unwrap();
        assert!(find(b"IHDR") < find(b"tEXtparameters"));
        assert!(find(b"tEXtparameters") < find(b"tEXtmgpu"));
        assert!(find(b"tEXtmgpu") < find(b"IDAT"));
    }

    #[test]
    fn failing_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.png");
        let e = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot write "), "{e}");
        assert!(e.to_string().ends_with("img.png: disk full"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no final file, no temporary file"
        );

        // An existing file keeps its content when a rewrite fails.
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, |_| Err(std::io::Error::other("boom"))).unwrap_err();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reading_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        std::fs::write(&path, b"\x89PNG but not really").unwrap();
        let e = read_png_metadata(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read PNG ") && e.contains("x.png"),
            "{e}"
        );
        let img = gradient(4, 4);
        let bytes = encode_png_with_text(&img, &[(RECORD_KEY, "{\"format\": 1}".into())]).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let e = read_png_metadata(&path).unwrap_err().to_string();
        assert!(
            e.contains(
                "x.png has an `mgpu` metadata chunk that is not a valid record: missing field"
            ),
            "{e}"
        );
        let e = read_png_metadata(&dir.path().join("none.png"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot open "), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn outputs_are_readable_by_others_like_any_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_atomic(&path, |w: &mut dyn Write| w.write_all(b"x")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // 0666 less a umask; a temporary file's 0600 would fail this under any usual umask.
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        assert_ne!(mode, 0o600, "{mode:o}");
    }
}
