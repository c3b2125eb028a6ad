//! Output files: images with metadata, written atomically.
