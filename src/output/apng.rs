//! Animated PNG (APNG) videos: lossless, written by the `png` crate, nothing to install.
//!
//! Layout (APNG spec, <https://wiki.mozilla.org/APNG_Specification>): `IHDR`, `acTL`
//! (frame count, 0 plays = loop forever), the `parameters` and `mgpu` text chunks exactly as in
//! an image PNG ([`super::png`]), then per frame an `fcTL` (full-size frame, delay `den/num`
//! seconds of the [`Fps`], dispose `None`, blend `Source`) and its data — `IDAT` for frame 0,
//! which is also the still image that viewers without APNG support show, `fdAT` after. Encoder
//! settings are the image PNG's (8-bit RGB, `Compression::Balanced`, adaptive filter), so the
//! same frames, rate and record give the same bytes with the same `png` crate version. A
//! one-frame video is written as a plain PNG, byte-identical to [`super::encode_png`].
//!
//! [`decode_apng`] reads any 8-bit-or-less PNG/APNG back as full RGB frames, compositing
//! sub-frames by their offsets, blend and dispose operations on an RGBA canvas that starts
//! transparent black; alpha is then dropped (as ComfyUI's `LoadImage` does), for golden
//! comparisons.

use std::io::Cursor;
use std::path::Path;

use image::RgbImage;
use png::{BlendOp, ColorType, DisposeOp, Transformations};

use super::png::{encode_png, encoder, record_texts, write_atomic};
use super::record::ImageRecord;
use super::video::{check_frames, Fps};
use super::OutputError;

/// Encodes `frames` (at least one, all one size) as an APNG that loops forever, at `fps`, with
/// the record's `parameters` and `mgpu` chunks. One frame → the plain PNG of [`encode_png`].
pub fn encode_apng(
    frames: &[RgbImage],
    fps: Fps,
    record: &ImageRecord,
) -> Result<Vec<u8>, OutputError> {
    let size = check_frames(frames)?;
    if let [only] = frames {
        return encode_png(only, record);
    }
    let count = u32::try_from(frames.len()).map_err(|_| OutputError::Apng {
        path: "(encoding)".into(),
        reason: format!("{} frames is more than an APNG can hold", frames.len()),
    })?;
    let raw = frames[0].as_raw().len();
    let mut out = Vec::with_capacity(raw / 2 * frames.len() + 1024);
    let mut enc = encoder(&mut out, size, &record_texts(record))?;
    enc.set_animated(count, 0).map_err(OutputError::PngEncode)?;
    // Delay = 1/fps seconds = den/num; `Fps` keeps both within u16.
    let (delay_num, delay_den) = (fps.den() as u16, fps.num() as u16);
    enc.set_frame_delay(delay_num, delay_den)
        .map_err(OutputError::PngEncode)?;
    enc.set_dispose_op(DisposeOp::None)
        .map_err(OutputError::PngEncode)?;
    enc.set_blend_op(BlendOp::Source)
        .map_err(OutputError::PngEncode)?;
    let mut writer = enc.write_header().map_err(OutputError::PngEncode)?;
    for frame in frames {
        writer
            .write_image_data(frame.as_raw())
            .map_err(OutputError::PngEncode)?;
    }
    writer.finish().map_err(OutputError::PngEncode)?;
    Ok(out)
}

/// Writes [`encode_apng`]'s bytes to `path` atomically (see [`write_atomic`]).
pub fn write_apng(
    path: &Path,
    frames: &[RgbImage],
    fps: Fps,
    record: &ImageRecord,
) -> Result<(), OutputError> {
    let bytes = encode_apng(frames, fps, record)?;
    write_atomic(path, |w| w.write_all(&bytes))
}

/// Reads a PNG or APNG file's frames (see [`decode_apng`]).
pub fn decode_apng_file(path: &Path) -> Result<Vec<RgbImage>, OutputError> {
    let bytes = std::fs::read(path).map_err(|e| OutputError::Io {
        path: path.to_path_buf(),
        op: "read",
        source: e,
    })?;
    decode_named(&bytes, path)
}

/// Decodes a PNG (one frame) or APNG (its animation frames; a default image that is not part
/// of the animation is skipped) into full-size RGB frames.
pub fn decode_apng(bytes: &[u8]) -> Result<Vec<RgbImage>, OutputError> {
    decode_named(bytes, Path::new("(in memory)"))
}

fn decode_named(bytes: &[u8], path: &Path) -> Result<Vec<RgbImage>, OutputError> {
    let decode = |e: png::DecodingError| OutputError::PngDecode {
        path: path.to_path_buf(),
        source: e,
    };
    let bad = |reason: String| OutputError::Apng {
        path: path.to_path_buf(),
        reason,
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Palette → RGB(A), low bit depths → 8, 16 bits → 8.
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(decode)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let animation = reader.info().animation_control;
    let default_in_animation = reader.info().frame_control.is_some();
    let total = match animation {
        None => 1,
        Some(a) if default_in_animation => a.num_frames,
        Some(a) => a.num_frames.saturating_add(1),
    };
    let len = reader
        .output_buffer_size()
        .ok_or_else(|| bad("the image is too large".into()))?;
    let mut buf = vec![0u8; len];
    // RGBA canvas; transparent black before the first frame (APNG spec).
    let mut canvas = vec![0u8; width as usize * height as usize * 4];
    let mut frames = Vec::with_capacity(total as usize);
    for index in 0..total {
        let out = reader.next_frame(&mut buf).map_err(decode)?;
        if animation.is_some() && index == 0 && !default_in_animation {
            continue;
        }
        let fc = match animation {
            Some(_) => reader.info().frame_control,
            None => None,
        };
        let (x0, y0) = fc.map_or((0, 0), |f| (f.x_offset, f.y_offset));
        let (fw, fh) = (out.width, out.height);
        if x0.checked_add(fw).is_none_or(|x| x > width)
            || y0.checked_add(fh).is_none_or(|y| y > height)
        {
            return Err(bad(format!(
                "frame {} ({fw}x{fh} at {x0},{y0}) does not fit the {width}x{height} image",
                frames.len()
            )));
        }
        let channels = match out.color_type {
            ColorType::Grayscale => 1,
            ColorType::GrayscaleAlpha => 2,
            ColorType::Rgb => 3,
            ColorType::Rgba => 4,
            ColorType::Indexed => return Err(bad("palette was not expanded".into())),
        };
        let blend_over = fc.is_some_and(|f| f.blend_op == BlendOp::Over);
        let dispose = fc.map_or(DisposeOp::None, |f| f.dispose_op);
        let saved = (dispose == DisposeOp::Previous).then(|| canvas.clone());
        for y in 0..fh as usize {
            let row = &buf[y * out.line_size..][..fw as usize * channels];
            for (x, px) in row.chunks_exact(channels).enumerate() {
                let src = match *px {
                    [g] => [g, g, g, 255],
                    [g, a] => [g, g, g, a],
                    [r, g, b] => [r, g, b, 255],
                    [r, g, b, a] => [r, g, b, a],
                    _ => unreachable!("chunks_exact gives 1 to 4 channels"),
                };
                let at = ((y0 as usize + y) * width as usize + x0 as usize + x) * 4;
                let dst: &mut [u8; 4] = (&mut canvas[at..at + 4])
                    .try_into()
                    .expect("a 4-byte slice");
                *dst = if blend_over { over(src, *dst) } else { src };
            }
        }
        let rgb: Vec<u8> = canvas
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        frames
            .push(RgbImage::from_raw(width, height, rgb).expect("canvas has width·height·3 bytes"));
        match dispose {
            DisposeOp::None => {}
            DisposeOp::Background => {
                for y in y0 as usize..(y0 + fh) as usize {
                    let at = (y * width as usize + x0 as usize) * 4;
                    canvas[at..at + fw as usize * 4].fill(0);
                }
            }
            DisposeOp::Previous => {
                // The spec treats `Previous` on the first frame as `Background`.
                if frames.len() == 1 {
                    canvas.fill(0);
                } else if let Some(s) = saved {
                    canvas = s;
                }
            }
        }
    }
    Ok(frames)
}

/// APNG `APNG_BLEND_OP_OVER` of non-premultiplied RGBA8 `src` onto `dst`.
fn over(src: [u8; 4], dst: [u8; 4]) -> [u8; 4] {
    match src[3] {
        255 => src,
        0 => dst,
        sa => {
            let sa = f32::from(sa) / 255.0;
            let da = f32::from(dst[3]) / 255.0 * (1.0 - sa);
            let a = sa + da;
            let mix = |s: u8, d: u8| ((f32::from(s) * sa + f32::from(d) * da) / a).round() as u8;
            [
                mix(src[0], dst[0]),
                mix(src[1], dst[1]),
                mix(src[2], dst[2]),
                (a * 255.0).round() as u8,
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::png::read_png_metadata;
    use super::super::record::tests::example;
    use super::super::Infotext;
    use super::*;

    /// A moving gradient: every frame differs.
    pub(crate) fn clip(w: u32, h: u32, n: u32) -> Vec<RgbImage> {
        (0..n)
            .map(|t| {
                RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([
                        (x * 7 + t * 11) as u8,
                        (y * 5 + t * 3) as u8,
                        ((x + y) * 3 + t * 17) as u8,
                    ])
                })
            })
            .collect()
    }

    fn chunk_types(png: &[u8]) -> Vec<String> {
        let mut at = 8;
        let mut types = Vec::new();
        while at + 8 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            types.push(String::from_utf8_lossy(&png[at + 4..at + 8]).into_owned());
            at += 12 + len;
        }
        types
    }

    #[test]
    fn round_trip_frames_metadata_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/clip.png");
        let frames = clip(24, 10, 5);
        let mut record = example();
        record.prompt = "a fox runs through snow — ☃".into(); // non-Latin-1 → iTXt
        let fps = Fps::new(30000, 1001).unwrap();
        write_apng(&path, &frames, fps, &record).unwrap();

        assert_eq!(decode_apng_file(&path).unwrap(), frames);
        let meta = read_png_metadata(&path).unwrap();
        assert_eq!((meta.width, meta.height), (24, 10));
        assert!(meta.animated);
        assert_eq!((meta.frames, meta.fps), (5, Some(fps)));
        assert_eq!(meta.record.as_ref(), Some(&record));
        assert_eq!(meta.parameters, Some(Infotext::from_record(&record)));

        // The `image` crate's APNG decoder agrees on every frame.
        use image::AnimationDecoder;
        let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let dec = image::codecs::png::PngDecoder::new(file).unwrap();
        assert!(dec.is_apng().unwrap());
        let theirs: Vec<RgbImage> = dec
            .apng()
            .unwrap()
            .into_frames()
            .map(|f| image::DynamicImage::from(f.unwrap().into_buffer()).to_rgb8())
            .collect();
        assert_eq!(theirs, frames);

        // Chunk order: metadata before the first frame; one fcTL per frame.
        let bytes = std::fs::read(&path).unwrap();
        let types = chunk_types(&bytes);
        let pos = |t: &str| types.iter().position(|x| x == t).unwrap();
        assert_eq!(types[0], "IHDR");
        assert!(pos("acTL") < pos("iTXt") && pos("iTXt") < pos("fcTL"));
        assert!(pos("fcTL") < pos("IDAT"));
        assert_eq!(types.iter().filter(|t| *t == "fcTL").count(), 5);
        assert_eq!(types.iter().filter(|t| *t == "fdAT").count(), 4);
        assert_eq!(types.last().unwrap(), "IEND");
        // Loops forever; delay 1001/30000 s.
        let actl = bytes.windows(4).position(|w| w == b"acTL").unwrap() + 4;
        assert_eq!(&bytes[actl..actl + 8], &[0, 0, 0, 5, 0, 0, 0, 0]);
        let fctl = bytes.windows(4).position(|w| w == b"fcTL").unwrap() + 4;
        assert_eq!(&bytes[fctl + 20..fctl + 24], &[0x03, 0xE9, 0x75, 0x30]);
    }

    #[test]
    fn deterministic_and_one_frame_is_the_image_png() {
        let frames = clip(16, 16, 3);
        let fps = Fps::integer(16).unwrap();
        let a = encode_apng(&frames, fps, &example()).unwrap();
        assert_eq!(a, encode_apng(&frames, fps, &example()).unwrap());
        assert_ne!(
            a,
            encode_apng(&frames, Fps::integer(8).unwrap(), &example()).unwrap()
        );
        let mut other = example();
        other.seed = 7;
        assert_ne!(a, encode_apng(&frames, fps, &other).unwrap());
        // tEXt for Latin-1 metadata, parameters before mgpu, as in the image PNG.
        let find = |n: &[u8]| a.windows(n.len()).position(|w| w == n).unwrap();
        assert!(find(b"tEXtparameters") < find(b"tEXtmgpu"));
        assert!(find(b"tEXtmgpu") < find(b"fcTL"));

        let one = encode_apng(&frames[..1], fps, &example()).unwrap();
        assert_eq!(one, encode_png(&frames[0], &example()).unwrap());
        assert!(!chunk_types(&one).iter().any(|t| t == "acTL"));
        assert_eq!(decode_apng(&one).unwrap(), &frames[..1]);
    }

    #[test]
    fn errors_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let fps = Fps::integer(16).unwrap();
        let e = write_apng(&path, &[], fps, &example()).unwrap_err();
        assert_eq!(e.to_string(), "a video needs at least one frame, got none");
        let mixed = [RgbImage::new(4, 4), RgbImage::new(4, 6)];
        let e = write_apng(&path, &mixed, fps, &example()).unwrap_err();
        assert!(e.to_string().starts_with("frame 1 is 4x6 pixels"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let e = decode_apng(b"\x89PNG\r\n\x1a\nnope")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read PNG (in memory): "), "{e}");
        let e = decode_apng_file(&dir.path().join("none.png"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("none.png"),
            "{e}"
        );
        // A cut-off APNG: the frames after the cut are missing → an error, not fewer frames.
        let full = encode_apng(&clip(8, 8, 4), fps, &example()).unwrap();
        assert!(decode_apng(&full[..full.len() * 3 / 4]).is_err());
    }

    /// Sub-frames, `Over` blending and `Background`/`Previous` disposal, as other writers use
    /// them (hand-built with the `png` crate's per-frame controls).
    #[test]
    fn decoder_composites_subframes() {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 4, 2);
        enc.set_color(ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_animated(3, 0).unwrap();
        let mut w = enc.write_header().unwrap();
        // Frame 0: full, opaque red; dispose Previous on frame 0 acts as Background.
        w.set_dispose_op(DisposeOp::None).unwrap();
        w.write_image_data(&[255, 0, 0, 255].repeat(8)).unwrap();
        // Frame 1: 2x1 at (1, 1), half-transparent blue blended over; then Previous.
        w.set_frame_dimension(2, 1).unwrap();
        w.set_frame_position(1, 1).unwrap();
        w.set_blend_op(BlendOp::Over).unwrap();
        w.set_dispose_op(DisposeOp::Previous).unwrap();
        w.write_image_data(&[0, 0, 255, 128].repeat(2)).unwrap();
        // Frame 2: 1x1 at (3, 0), Source: fully transparent → black once alpha is dropped.
        w.set_frame_dimension(1, 1).unwrap();
        w.set_frame_position(3, 0).unwrap();
        w.set_blend_op(BlendOp::Source).unwrap();
        w.set_dispose_op(DisposeOp::Background).unwrap();
        w.write_image_data(&[9, 9, 9, 0]).unwrap();
        w.finish().unwrap();

        let f = decode_apng(&out).unwrap();
        assert_eq!(f.len(), 3);
        let red = image::Rgb([255, 0, 0]);
        assert!(f[0].pixels().all(|p| *p == red));
        assert_eq!(f[1].get_pixel(0, 1), &red);
        // 50 % blue over red: (255·127/255·…) ≈ (127, 0, 128).
        assert_eq!(f[1].get_pixel(1, 1), &image::Rgb([127, 0, 128]));
        assert_eq!(f[1].get_pixel(2, 1), &image::Rgb([127, 0, 128]));
        assert_eq!(f[1].get_pixel(3, 1), &red);
        // Frame 1 was disposed to the previous canvas: frame 2 sees all red but its own pixel.
        assert_eq!(f[2].get_pixel(1, 1), &red);
        assert_eq!(f[2].get_pixel(3, 0), &image::Rgb([9, 9, 9]));
        assert_eq!(f[2].get_pixel(2, 0), &red);
    }
}
