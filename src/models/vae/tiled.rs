//! Tiled VAE decoding for images too large to decode in one piece.
//!
//! The latent is cut into overlapping tiles of at most `tile`×`tile` latent pixels whose
//! neighbours share at least `overlap` latent pixels; each tile is decoded alone and the
//! decoded tiles are blended with weights that ramp linearly from the tile's inner edges over
//! `overlap · 8` image pixels (edges on the image border are not feathered), normalised by
//! the weight sum at every pixel.
//!
//! Seams: a tile's decoder sees only its own latent pixels, so its GroupNorm statistics and
//! its mid-block attention differ from a whole-image decode. The result is therefore *not*
//! equal to the untiled decode: colours and textures may shift slightly from tile to tile,
//! and the linear blend hides the transitions (visible seams shrink as the overlap grows).
//! When the latent fits in a single tile the result equals [`Decoder::decode`] exactly.
//! Memory: one tile's activations plus the output image.

use candle_core::{bail, Result, Tensor};

use super::Decoder;

/// Tile size and overlap in latent pixels (× 8 in image pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
}

impl Default for Tiling {
    /// 64-pixel latent tiles (512-pixel image tiles) sharing 8 latent pixels (64 image pixels).
    fn default() -> Self {
        Self {
            tile: 64,
            overlap: 8,
        }
    }
}

impl Tiling {
    pub fn validate(&self) -> Result<()> {
        if self.tile < 2 || self.overlap >= self.tile {
            bail!(
                "VAE tiling: tile {} must be at least 2 and larger than the overlap {}",
                self.tile,
                self.overlap
            )
        }
        Ok(())
    }
}

/// Tile start positions covering `len` with tiles of `tile` (≤ len), neighbours overlapping
/// by at least `overlap`, spread evenly.
fn starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let step = tile - overlap;
    let n = (len - overlap).div_ceil(step);
    (0..n)
        .map(|k| (k * (len - tile) + (n - 1) / 2) / (n - 1))
        .collect()
}

/// Blend weights along one axis for a tile at `start` of `size` pixels in an image of
/// `len`: a linear ramp of `ramp` pixels at each edge that is not on the image border.
fn ramp_weights(start: usize, size: usize, len: usize, ramp: usize) -> Vec<f32> {
    (0..size)
        .map(|i| {
            let mut w = 1f32;
            if start > 0 && ramp > 0 {
                w = w.min((i as f32 + 0.5) / ramp as f32);
            }
            if start + size < len && ramp > 0 {
                w = w.min(((size - i) as f32 - 0.5) / ramp as f32);
            }
            w
        })
        .collect()
}

impl Decoder {
    /// Like [`Decoder::decode`], tile by tile (see the module documentation for the seams).
    pub fn decode_tiled(&self, latent: &Tensor, tiling: Tiling) -> Result<Tensor> {
        tiling.validate()?;
        let (b, _c, h, w) = latent.dims4()?;
        if h <= tiling.tile && w <= tiling.tile {
            return self.decode(latent);
        }
        let f = self.config().downscale();
        let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
        let dev = latent.device();
        let mut acc: Option<Tensor> = None;
        let mut wsum: Option<Tensor> = None;
        for &y0 in &starts(h, th, tiling.overlap) {
            for &x0 in &starts(w, tw, tiling.overlap) {
                let tile = self.decode(&latent.narrow(2, y0, th)?.narrow(3, x0, tw)?)?;
                let (_, oc, ph, pw) = tile.dims4()?;
                let wy = ramp_weights(y0 * f, ph, h * f, tiling.overlap * f);
                let wx = ramp_weights(x0 * f, pw, w * f, tiling.overlap * f);
                let wy = Tensor::from_vec(wy, (1, 1, ph, 1), dev)?.to_dtype(tile.dtype())?;
                let wx = Tensor::from_vec(wx, (1, 1, 1, pw), dev)?.to_dtype(tile.dtype())?;
                let mask = wy.broadcast_mul(&wx)?;
                let acc_t = match acc.take() {
                    Some(a) => a,
                    None => Tensor::zeros((b, oc, h * f, w * f), tile.dtype(), dev)?,
                };
                let ws_t = match wsum.take() {
                    Some(a) => a,
                    None => Tensor::zeros((1, 1, h * f, w * f), tile.dtype(), dev)?,
                };
                let (ry, rx) = (y0 * f..y0 * f + ph, x0 * f..x0 * f + pw);
                let cur = acc_t.narrow(2, y0 * f, ph)?.narrow(3, x0 * f, pw)?;
                let acc_new = acc_t.slice_assign(
                    &[0..b, 0..oc, ry.clone(), rx.clone()],
                    &(cur + tile.broadcast_mul(&mask)?)?,
                )?;
                let cur_w = ws_t.narrow(2, y0 * f, ph)?.narrow(3, x0 * f, pw)?;
                let ws_new = ws_t.slice_assign(&[0..1, 0..1, ry, rx], &(cur_w + mask)?)?;
                acc = Some(acc_new);
                wsum = Some(ws_new);
            }
        }
        match (acc, wsum) {
            (Some(a), Some(ws)) => a.broadcast_div(&ws),
            _ => bail!("VAE tiling produced no tiles for a {h}×{w} latent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_with_overlap() {
        assert_eq!(starts(40, 64, 8), vec![0]);
        assert_eq!(starts(64, 64, 8), vec![0]);
        for (len, tile, ov) in [(100, 64, 8), (121, 64, 8), (300, 64, 16), (65, 64, 8)] {
            let s = starts(len, tile, ov);
            assert_eq!(s[0], 0);
            assert_eq!(*s.last().unwrap() + tile, len, "{len} {tile} {ov}: {s:?}");
            for p in s.windows(2) {
                assert!(p[0] + tile >= p[1] + ov, "{len} {tile} {ov}: {s:?}");
                assert!(p[1] > p[0]);
            }
        }
    }

    #[test]
    fn ramps_are_positive_and_flat_in_the_middle() {
        let w = ramp_weights(64, 128, 512, 32);
        assert!(w.iter().all(|&x| x > 0.0 && x <= 1.0));
        assert_eq!(w[64], 1.0);
        assert!(w[0] < 0.05 && w[127] < 0.05);
        let border = ramp_weights(0, 128, 512, 32);
        assert_eq!(border[0], 1.0);
    }
}
