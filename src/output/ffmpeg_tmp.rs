//! Finding `ffmpeg` (temporary until the video writer lands).

use std::path::PathBuf;

/// An `ffmpeg` executable.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    pub path: PathBuf,
}

impl Ffmpeg {
    /// `MGPU_FFMPEG`, else `ffmpeg` on `PATH`.
    pub fn find() -> Option<Ffmpeg> {
        if let Some(p) = std::env::var_os("MGPU_FFMPEG") {
            let p = PathBuf::from(p);
            return p.is_file().then_some(Ffmpeg { path: p });
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("ffmpeg"))
            .find(|p| p.is_file())
            .map(|path| Ffmpeg { path })
    }
}
