//! Pixels in and out: the VAE's decoded image tensor → 8-bit RGB exactly as ComfyUI saves it,
//! and img2img init images (PNG/JPEG) → the VAE encoder's input tensor.
//!
//! Rounding, following ComfyUI (read, not copied): the VAE decode ends with
//! `clamp((x + 1) / 2, 0, 1)` in f32 and `SaveImage` does `np.clip(255. * i, 0, 255).astype(np.uint8)`
//! — a truncation, not a rounding. [`image_to_rgb8`] does the same f32 operations, so the same
//! decoded tensor gives the same bytes as ComfyUI. Loading does `LoadImage`'s
//! `u8 / 255` (f32) and the VAE's `2x − 1`, after applying the EXIF orientation and dropping alpha.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::OutputError;

/// `[-1, 1]` → u8 as ComfyUI: `trunc(255 · clamp((x + 1) / 2, 0, 1))`, all in f32.
#[inline]
pub fn to_u8(x: f32) -> u8 {
    let v = ((x + 1.0) / 2.0).clamp(0.0, 1.0);
    (255.0f32 * v) as u8
}

/// u8 → `[-1, 1]` as ComfyUI's `LoadImage` + VAE input: `(v / 255) · 2 − 1` in f32.
#[inline]
pub fn from_u8(v: u8) -> f32 {
    (f32::from(v) / 255.0) * 2.0 - 1.0
}

/// The VAE's decoded image (`[1, 3, H, W]` or `[3, H, W]`, any float dtype and device, values
/// nominally in [-1, 1]) as 8-bit RGB. NaN or infinite values are an error (ComfyUI would
/// silently write black).
pub fn image_to_rgb8(image: &Tensor) -> Result<RgbImage, OutputError> {
    let chw = match image.dims() {
        [1, 3, _, _] => image.squeeze(0)?,
        [3, _, _] => image.clone(),
        other => {
            return Err(OutputError::NotAnImage {
                shape: other.to_vec(),
            })
        }
    };
    let (_, h, w) = chw.dims3()?;
    // [3, H, W] → [H, W, 3], f32 on the CPU.
    let hwc: Vec<f32> = chw
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1()?;
    let bad = hwc.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        return Err(OutputError::NonFinite {
            count: bad,
            total: hwc.len(),
        });
    }
    let bytes: Vec<u8> = hwc.into_iter().map(to_u8).collect();
    let (w, h) = (w as u32, h as u32);
    RgbImage::from_raw(w, h, bytes).ok_or(OutputError::NotAnImage {
        shape: vec![3, h as usize, w as usize],
    })
}

crate::sample::names::name_enum!(
    /// What to do when an img2img init image is not the job's size.
    InitFit, "init image fit",
    "What to do with an init image of another size: exact (refuse it), resize (stretch to the job's size with a Lanczos-3 filter) or cover (scale keeping the aspect ratio until it covers the job's size, then crop the centre).",
    {
        /// Refuse it with an error naming both sizes (the default).
        Exact => "exact",
        /// Stretch it to the job's size with a Lanczos-3 filter (aspect ratio not kept),
        /// like ComfyUI's `ImageScale` with `crop = disabled`.
        Resize => "resize",
        /// Scale it with a Lanczos-3 filter, keeping its aspect ratio, to the smallest size
        /// that covers the job's, then crop the centre (ComfyUI's `ImageScale` with
        /// `crop = center`). Image-to-video uses it.
        Cover => "cover",
    }
);

/// Reads an img2img init image (PNG or JPEG) as the VAE encoder's input: `[1, 3, H, W]` f32 on
/// the CPU in [-1, 1], `H × W` = `height × width` (see [`InitFit`]).
pub fn load_init_image(
    path: &Path,
    width: u32,
    height: u32,
    fit: InitFit,
) -> Result<Tensor, OutputError> {
    let decode = |e: image::ImageError| OutputError::ImageDecode {
        path: path.to_path_buf(),
        source: e,
    };
    let reader = ImageReader::open(path)
        .map_err(|e| OutputError::Io {
            path: path.to_path_buf(),
            op: "open the init image",
            source: e,
        })?
        .with_guessed_format()
        .map_err(|e| OutputError::Io {
            path: path.to_path_buf(),
            op: "read the init image",
            source: e,
        })?;
    let mut decoder = reader.into_decoder().map_err(decode)?;
    let orientation = decoder.orientation().map_err(decode)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode)?;
    img.apply_orientation(orientation);
    let mut rgb = img.to_rgb8();
    if rgb.dimensions() != (width, height) {
        match fit {
            InitFit::Exact => {
                return Err(OutputError::InitSize {
                    path: path.to_path_buf(),
                    got: rgb.dimensions(),
                    want: (width, height),
                })
            }
            InitFit::Resize => {
                rgb = image::imageops::resize(
                    &rgb,
                    width,
                    height,
                    image::imageops::FilterType::Lanczos3,
                );
            }
            InitFit::Cover => rgb = cover(&rgb, width, height),
        }
    }
    rgb8_to_tensor(&rgb)
}

/// `rgb` scaled (Lanczos-3, aspect ratio kept) to the smallest size covering `width ×
/// height`, then cropped to it around the centre.
pub fn cover(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = rgb.dimensions();
    if (w0, h0) == (width, height) || w0 == 0 || h0 == 0 {
        return rgb.clone();
    }
    // Scale by the larger of the two ratios; round the scaled size up so it covers.
    let (sw, sh) = if u64::from(width) * u64::from(h0) >= u64::from(height) * u64::from(w0) {
        let sh = (u64::from(h0) * u64::from(width)).div_ceil(u64::from(w0));
        (width, sh.max(u64::from(height)) as u32)
    } else {
        let sw = (u64::from(w0) * u64::from(height)).div_ceil(u64::from(h0));
        (sw.max(u64::from(width)) as u32, height)
    };
    let scaled = image::imageops::resize(rgb, sw, sh, image::imageops::FilterType::Lanczos3);
    let (x, y) = ((sw - width) / 2, (sh - height) / 2);
    image::imageops::crop_imm(&scaled, x, y, width, height).to_image()
}

/// 8-bit RGB → `[1, 3, H, W]` f32 in [-1, 1] on the CPU.
pub fn rgb8_to_tensor(rgb: &RgbImage) -> Result<Tensor, OutputError> {
    let (w, h) = rgb.dimensions();
    let data: Vec<f32> = rgb.as_raw().iter().map(|&v| from_u8(v)).collect();
    let hwc = Tensor::from_vec(data, (h as usize, w as usize, 3), &Device::Cpu)?;
    Ok(hwc.permute((2, 0, 1))?.contiguous()?.unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comfyui_truncation() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(0.0), 127); // 127.5 truncates
                                     // 255 · 0.999 = 254.745 → 254 (truncation, where rounding would give 255).
        assert_eq!(to_u8(0.998), 254);
        for v in 0..=255u8 {
            // Loading then saving a pixel is the identity except where f32 lands just below.
            let back = to_u8(from_u8(v));
            assert!(back == v || back + 1 == v, "{v} → {back}");
        }
    }

    #[test]
    fn tensor_to_rgb_layout_and_errors() -> Result<(), OutputError> {
        let dev = Device::Cpu;
        // 1×2 image: left pixel red, right pixel blue.
        let t = Tensor::new(&[[[1.0f32, -1.0]], [[-1.0, -1.0]], [[-1.0, 1.0]]], &dev)?;
        let img = image_to_rgb8(&t.unsqueeze(0)?)?;
        assert_eq!(img.dimensions(), (2, 1));
        assert_eq!(img.as_raw(), &[255, 0, 0, 0, 0, 255]);
        let bf16 = t.to_dtype(DType::BF16)?;
        assert_eq!(image_to_rgb8(&bf16)?.as_raw(), img.as_raw());

        let e = image_to_rgb8(&Tensor::zeros((1, 4, 2, 2), DType::F32, &dev)?).unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected an RGB image tensor of shape [1, 3, H, W] or [3, H, W], got [1, 4, 2, 2]"
        );
        let nan = Tensor::new(&[[[f32::NAN]], [[0.0]], [[0.0]]], &dev)?;
        let e = image_to_rgb8(&nan).unwrap_err();
        assert_eq!(e.to_string(), "the decoded image has 1 NaN or infinite values out of 3: the model or VAE produced invalid numbers");
        Ok(())
    }

    #[test]
    fn init_image_round_trip_and_size_policy() -> Result<(), OutputError> {
        let dir = tempfile::tempdir().map_err(|e| OutputError::Io {
            path: "tmp".into(),
            op: "create",
            source: e,
        })?;
        let path = dir.path().join("init.png");
        let mut src = RgbImage::new(4, 2);
        for (i, p) in src.pixels_mut().enumerate() {
            *p = image::Rgb([i as u8 * 30, 255 - i as u8, 7]);
        }
        src.save(&path).map_err(|e| OutputError::ImageDecode {
            path: path.clone(),
            source: e,
        })?;
        let t = load_init_image(&path, 4, 2, InitFit::Exact)?;
        assert_eq!(t.dims(), &[1, 3, 2, 4]);
        let back = image_to_rgb8(&t)?;
        for (a, b) in back.as_raw().iter().zip(src.as_raw()) {
            assert!(a == b || a + 1 == *b);
        }
        let e = load_init_image(&path, 8, 8, InitFit::Exact)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("init.png is 4x2 pixels but the job is 8x8: resize the image, change the job's size, or set the init image fit to `resize`"), "{e}");
        assert_eq!(
            load_init_image(&path, 8, 6, InitFit::Resize)?.dims(),
            &[1, 3, 6, 8]
        );
        let e = load_init_image(&dir.path().join("missing.png"), 4, 2, InitFit::Exact)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot open the init image "), "{e}");
        std::fs::write(dir.path().join("junk.png"), b"not an image").unwrap();
        let e = load_init_image(&dir.path().join("junk.png"), 4, 2, InitFit::Exact)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.png is not a readable PNG or JPEG image"),
            "{e}"
        );
        assert_eq!("resize".parse::<InitFit>().unwrap(), InitFit::Resize);
        assert_eq!(
            "exakt"
                .parse::<InitFit>()
                .unwrap_err()
                .suggestion
                .as_deref(),
            Some("exact")
        );
        Ok(())
    }

    #[test]
    fn cover_keeps_the_aspect_ratio_and_crops_the_centre() {
        // 8×2: left half red, right half blue, a green column in the middle two.
        let src = RgbImage::from_fn(8, 2, |x, _| match x {
            3 | 4 => image::Rgb([0, 255, 0]),
            x if x < 3 => image::Rgb([255, 0, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        // To 2×2: scaled to 8×2 (already covers), centre 2 columns kept: the green ones.
        let c = cover(&src, 2, 2);
        assert_eq!(c.dimensions(), (2, 2));
        assert!(c.pixels().all(|p| p.0 == [0, 255, 0]), "{:?}", c.as_raw());
        // Up-scaled to cover 4×4: 16×4 then cropped to the centre; wider targets crop rows.
        assert_eq!(cover(&src, 4, 4).dimensions(), (4, 4));
        assert_eq!(cover(&src, 16, 1).dimensions(), (16, 1));
        assert_eq!(cover(&src, 3, 7).dimensions(), (3, 7));
        assert_eq!(cover(&src, 8, 2).as_raw(), src.as_raw());
    }
}
