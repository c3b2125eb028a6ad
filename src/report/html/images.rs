//! Pictures for the HTML report: scaled-down thumbnails of outputs and difference heat maps
//! of golden mismatches, each a PNG embedded as a `data:` URI so the page needs no other file.

use std::path::Path;

use base64::Engine as _;
use image::RgbImage;

/// Longest side of a gallery thumbnail, in pixels.
pub const THUMB: u32 = 256;

/// A picture ready for an `<img src=…>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub data_uri: String,
    /// The full-size output's size and frame count.
    pub width: u32,
    pub height: u32,
    pub frames: usize,
}

/// Reads an output (PNG or animated PNG) and returns its first frame scaled to at most
/// [`THUMB`] pixels. MP4 outputs are not decoded (that needs ffmpeg): `Err` says so.
pub fn thumbnail(path: &Path) -> Result<Picture, String> {
    if crate::output::needs_ffmpeg(path) {
        return Err("an MP4 video: open the file to watch it".into());
    }
    let frames = crate::output::decode_apng_file(path).map_err(|e| e.to_string())?;
    let first = frames
        .first()
        .ok_or_else(|| format!("{} has no frames", path.display()))?;
    let (width, height) = first.dimensions();
    Ok(Picture {
        data_uri: png_data_uri(&scaled(first, THUMB))?,
        width,
        height,
        frames: frames.len(),
    })
}

/// `img` scaled so that its longer side is at most `max` (never enlarged).
pub fn scaled(img: &RgbImage, max: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w <= max && h <= max {
        return img.clone();
    }
    let k = max as f64 / w.max(h) as f64;
    let (tw, th) = (
        ((w as f64 * k).round() as u32).max(1),
        ((h as f64 * k).round() as u32).max(1),
    );
    image::imageops::thumbnail(img, tw, th)
}

/// `img` as a PNG `data:` URI.
pub fn png_data_uri(img: &RgbImage) -> Result<String, String> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("encoding a thumbnail: {e}"))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

/// The difference of two same-sized frames as a heat map: per pixel the largest absolute
/// channel difference, scaled so the largest difference of the image is white (black:
/// identical, then red, yellow, white). Returns the map and the largest difference.
pub fn heat_map(a: &RgbImage, b: &RgbImage) -> Option<(RgbImage, u8)> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let diff: Vec<u8> = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (0..3).map(|c| p.0[c].abs_diff(q.0[c])).max().unwrap_or(0))
        .collect();
    let max = diff.iter().copied().max().unwrap_or(0);
    let (w, h) = a.dimensions();
    let map = RgbImage::from_fn(w, h, |x, y| {
        let d = diff[(y * w + x) as usize];
        image::Rgb(heat(if max == 0 { 0.0 } else { d as f64 / max as f64 }))
    });
    Some((map, max))
}

/// Black → red → yellow → white for t in [0, 1].
fn heat(t: f64) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * 3.0;
    let c = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    [c(t), c(t - 1.0), c(t - 2.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_map_marks_where_pixels_differ() {
        let a = RgbImage::from_pixel(4, 2, image::Rgb([10, 10, 10]));
        let mut b = a.clone();
        b.put_pixel(3, 1, image::Rgb([10, 50, 10]));
        b.put_pixel(0, 0, image::Rgb([30, 10, 10]));
        let (map, max) = heat_map(&a, &b).unwrap();
        assert_eq!(max, 40);
        assert_eq!(map.get_pixel(3, 1).0, [255, 255, 255]);
        assert_eq!(map.get_pixel(1, 0).0, [0, 0, 0]);
        // Half the largest difference: red going to yellow.
        assert_eq!(map.get_pixel(0, 0).0, [255, 128, 0]);
        assert!(heat_map(&a, &RgbImage::new(2, 2)).is_none());
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_never_enlarge() {
        let big = RgbImage::new(1024, 512);
        assert_eq!(scaled(&big, 256).dimensions(), (256, 128));
        let small = RgbImage::new(64, 32);
        assert_eq!(scaled(&small, 256).dimensions(), (64, 32));
        let uri = png_data_uri(&small).unwrap();
        assert!(uri.starts_with("data:image/png;base64,iVBORw0KGgo"));
    }
}
