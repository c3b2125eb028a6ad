//! File hashes for image records (A1111 "Model hash", "Lora hashes"), computed once per file
//! version and off the critical path.
//!
//! Hashing a file reads all of it (a 23 GB FLUX checkpoint takes as long to hash as to read).
//! So: hashes are kept in `hashes.json` in the per-user cache folder ([`user_cache_dir`]:
//! `MGPU_CACHE_DIR`, else `$XDG_CACHE_HOME/mgpu`, else `~/.cache/mgpu`), keyed by absolute
//! path, size and modification time, and reused while those match — by every run of the user,
//! whatever its output folder or shard. Files not in it are hashed on a background thread
//! started when the run's models are known ([`FileHasher::start`]), all files at once (one
//! thread each reading it, and its digests on one or two more), so hashing overlaps text
//! encoding, loading and the first batch; a record asks for a hash only when the batch is done
//! ([`FileHasher::get`], which waits for the thread if that file is not finished). With
//! [`HashMode::Off`] records carry no hashes at all and nothing is read.
//!
//! Only LoRAs' records carry the safetensors data digest (AutoV3, A1111's "Lora hashes"), so
//! only files asked for as LoRAs ([`Need::WholeAndData`]) get it: a model file's one digest
//! is the run's critical path when the cache is cold (SHA-256 is sequential within a file),
//! and a second digest of the same 23.8 GB beside it only takes a core from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::output::FileHashes;

/// Whether image records carry file hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HashMode {
    /// Hash each model and LoRA file once per version (cached in the cache folder).
    #[default]
    Cached,
    /// No hashes in the records; files are not read for them.
    Off,
}

/// Which digests a file's records need; ordered, so hashes made for a need serve every need
/// not greater than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// A model: the whole file's SHA-256 ("Model hash").
    Whole,
    /// A LoRA: that and the safetensors data's SHA-256 (AutoV3, "Lora hashes").
    WholeAndData,
}

impl Need {
    fn of(data: bool) -> Need {
        if data {
            Need::WholeAndData
        } else {
            Need::Whole
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    sha256: String,
    autov3: Option<String>,
    /// Whether the data digest was computed (`autov3` is `None` for a file that is not
    /// safetensors either way). Entries written before this field always computed it.
    #[serde(default = "yes")]
    data: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    files: Vec<Entry>,
}

/// The per-user cache folder: `MGPU_CACHE_DIR`, else `$XDG_CACHE_HOME/mgpu` (an absolute
/// path, as the XDG base directory spec requires), else `$HOME/.cache/mgpu`; `None` when none
/// is set. `var` looks a variable up (the environment in a run, a table in tests).
pub fn user_cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("MGPU_CACHE_DIR") {
        return Some(d);
    }
    if let Some(d) = set("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Some(d.join("mgpu"));
    }
    set("HOME").map(|h| h.join(".cache").join("mgpu"))
}

fn stamp(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some((m.len(), t.as_nanos()))
}

/// Per file: its hashes (`None`: unreadable) and the need they were made for.
type Results = Arc<Mutex<HashMap<PathBuf, Option<(FileHashes, Need)>>>>;

/// Files hashed (not found in the cache): path, seconds, bytes.
type Timings = Arc<Mutex<Vec<(PathBuf, f64, u64)>>>;

/// The run's file hashes; see the module docs.
pub struct FileHasher {
    mode: HashMode,
    cache: PathBuf,
    done: Results,
    timings: Timings,
    worker: Option<JoinHandle<Vec<String>>>,
    notes: Vec<String>,
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHasher")
            .field("mode", &self.mode)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl FileHasher {
    /// Hashes kept in `cache_dir/hashes.json`.
    pub fn new(mode: HashMode, cache_dir: &Path) -> Self {
        FileHasher {
            mode,
            cache: cache_dir.join("hashes.json"),
            done: Arc::default(),
            timings: Arc::default(),
            worker: None,
            notes: Vec::new(),
        }
    }

    /// Starts hashing `files` (those not already known with the digests they need) on a
    /// background thread.
    pub fn start(&mut self, files: Vec<(PathBuf, Need)>) {
        if self.mode == HashMode::Off {
            return;
        }
        self.join();
        let cached: CacheFile = std::fs::read(&self.cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // The strongest need per file (a file may be both a model and a LoRA).
        let mut needs: Vec<(PathBuf, Need)> = Vec::new();
        for (f, need) in files {
            let abs = std::path::absolute(&f).unwrap_or(f);
            match needs.iter_mut().find(|(p, _)| *p == abs) {
                Some((_, n)) => *n = (*n).max(need),
                None => needs.push((abs, need)),
            }
        }
        let mut todo = Vec::new();
        {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            for (abs, need) in needs {
                match done.get(&abs) {
                    Some(None) => continue,
                    Some(Some((_, have))) if *have >= need => continue,
                    _ => {}
                }
                let hit = stamp(&abs).and_then(|(size, mtime_ns)| {
                    cached.files.iter().find(|e| {
                        e.path == abs
                            && e.size == size
                            && e.mtime_ns == mtime_ns
                            && Need::of(e.data) >= need
                    })
                });
                match hit {
                    Some(e) => {
                        let h = FileHashes {
                            sha256: e.sha256.clone(),
                            autov3: e.autov3.clone(),
                        };
                        done.insert(abs, Some((h, Need::of(e.data))));
                    }
                    None => todo.push((abs, need)),
                }
            }
        }
        if todo.is_empty() {
            return;
        }
        let done = self.done.clone();
        let timings = self.timings.clone();
        let cache = self.cache.clone();
        let spawned = std::thread::Builder::new()
            .name("mgpu-hash".into())
            .spawn(move || hash_all(todo, done, timings, cache, cached));
        match spawned {
            Ok(h) => self.worker = Some(h),
            Err(e) => self.notes.push(format!(
                "cannot start the hashing thread ({e}): records carry no file hashes"
            )),
        }
    }

    fn join(&mut self) {
        if let Some(h) = self.worker.take() {
            match h.join() {
                Ok(notes) => self.notes.extend(notes),
                Err(_) => self
                    .notes
                    .push("the hashing thread failed: some records carry no file hashes".into()),
            }
        }
    }

    /// The hashes of `path` with what `need` asks for (waiting for the background thread
    /// when it is still hashing it); `None` when hashing is off or the file could not be read
    /// (noted).
    pub fn get(&mut self, path: &Path, need: Need) -> Option<FileHashes> {
        if self.mode == HashMode::Off {
            return None;
        }
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        // Some(answer) once the file is known with the digests asked for (or unreadable).
        let known = |s: &Self| match s.done.lock().unwrap_or_else(|p| p.into_inner()).get(&abs) {
            Some(None) => Some(None),
            Some(Some((h, have))) if *have >= need => Some(Some(h.clone())),
            _ => None,
        };
        if let Some(h) = known(self) {
            return h;
        }
        self.join();
        if let Some(h) = known(self) {
            return h;
        }
        // Not started for this file (or without the digest asked for): hash it now.
        self.start(vec![(abs.clone(), need)]);
        self.join();
        known(self).flatten()
    }

    /// The files hashed since the last call (cache hits are not listed): path, seconds of
    /// the background thread, bytes read.
    pub fn take_timings(&mut self) -> Vec<(PathBuf, f64, u64)> {
        std::mem::take(&mut *self.timings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Notes for the log (unreadable files, an unwritable cache).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

/// Hashes one file, publishing the result in `done`; the cache entry when the file did not
/// change while it was read.
fn hash_one(
    path: PathBuf,
    need: Need,
    done: &Results,
    timings: &Timings,
) -> (Option<Entry>, Option<String>) {
    let before = stamp(&path);
    let t0 = std::time::Instant::now();
    let data = need == Need::WholeAndData;
    let (h, entry, note) = match FileHashes::compute(&path, data) {
        Ok(h) => {
            let entry = match before {
                Some((size, mtime_ns)) if stamp(&path) == before => Some(Entry {
                    path: path.clone(),
                    size,
                    mtime_ns,
                    sha256: h.sha256.clone(),
                    autov3: h.autov3.clone(),
                    data,
                }),
                _ => None,
            };
            timings.lock().unwrap_or_else(|p| p.into_inner()).push((
                path.clone(),
                t0.elapsed().as_secs_f64(),
                before.map_or(0, |(size, _)| size),
            ));
            (Some(h), entry, None)
        }
        Err(e) => (
            None,
            None,
            Some(format!(
                "cannot hash {} for the image records: {e}",
                path.display()
            )),
        ),
    };
    done.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path, h.map(|h| (h, need)));
    (entry, note)
}

fn hash_all(
    todo: Vec<(PathBuf, Need)>,
    done: Results,
    timings: Timings,
    cache: PathBuf,
    cached: CacheFile,
) -> Vec<String> {
    let mut notes = Vec::new();
    // Every file at once: the largest file's digest is the critical path and the others run
    // beside it on other cores; a LoRA's two digests already run on two threads.
    let results: Vec<(Option<Entry>, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .into_iter()
            .map(|(path, need)| {
                let (done, timings) = (&done, &timings);
                s.spawn(move || hash_one(path, need, done, timings))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        None,
                        Some("a hashing thread failed: a record carries no hashes".into()),
                    )
                })
            })
            .collect()
    });
    // Merge with what is on disk now: another run (a shard, a parallel job) may have saved
    // entries since this one read the cache.
    let mut cached = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
        .unwrap_or(cached);
    for (entry, note) in results {
        notes.extend(note);
        if let Some(e) = entry {
            cached.files.retain(|c| c.path != e.path);
            cached.files.push(e);
        }
    }
    // Entries of files that no longer exist (or changed) are dropped, so the cache stays small.
    cached
        .files
        .retain(|e| stamp(&e.path) == Some((e.size, e.mtime_ns)));
    cached.version = 1;
    let text = match serde_json::to_vec_pretty(&cached) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("cannot save the hash cache: {e}"));
            return notes;
        }
    };
    if let Some(parent) = cache.parent() {
        if let Err(e) = std::fs::create_dir_all(parent) {
            notes.push(format!(
                "cannot create the hash cache folder {}: {e} (files will be hashed again next run)",
                parent.display()
            ));
            return notes;
        }
    }
    if let Err(e) = crate::output::write_atomic(&cache, |w| w.write_all(&text)) {
        notes.push(format!(
            "cannot save the hash cache {}: {e} (files will be hashed again next run)",
            cache.display()
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_cached_by_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.safetensors");
        std::fs::write(&f, b"\x02\0\0\0\0\0\0\0{}abc").unwrap();
        let cache = dir.path().join("cache");
        let mut h = FileHasher::new(HashMode::Cached, &cache);
        h.start(vec![(f.clone(), Need::Whole)]);
        let a = h.get(&f, Need::Whole).unwrap();
        assert_eq!(a, FileHashes::compute(&f, false).unwrap());
        h.join(); // the cache file is written after the last hash
        assert!(cache.join("hashes.json").exists());
        // A new run finds it in the cache without reading the file: prove it by checking the
        // cached entry is used (same value) and that a changed file is hashed again.
        assert_eq!(h.take_timings().len(), 1, "the file was read and timed");
        let mut h2 = FileHasher::new(HashMode::Cached, &cache);
        h2.start(vec![(f.clone(), Need::Whole)]);
        assert_eq!(h2.get(&f, Need::Whole).unwrap(), a);
        assert!(h2.take_timings().is_empty(), "a cache hit reads nothing");
        // A LoRA needs the data digest too, which the model's entry lacks: hashed again (and
        // both kinds are served from the cache after that).
        let with_data = h2.get(&f, Need::WholeAndData).unwrap();
        assert_eq!(with_data, FileHashes::compute(&f, true).unwrap());
        assert!(with_data.autov3.is_some());
        assert_eq!(h2.take_timings().len(), 1, "read again for the data digest");
        h2.join();
        let mut h4 = FileHasher::new(HashMode::Cached, &cache);
        h4.start(vec![(f.clone(), Need::WholeAndData)]);
        assert_eq!(h4.get(&f, Need::WholeAndData).unwrap(), with_data);
        assert_eq!(h4.get(&f, Need::Whole).unwrap(), with_data);
        assert!(h4.take_timings().is_empty(), "a cache hit reads nothing");
        std::fs::write(&f, b"\x02\0\0\0\0\0\0\0{}abcd").unwrap();
        let mut h3 = FileHasher::new(HashMode::Cached, &cache);
        h3.start(vec![(f.clone(), Need::Whole)]);
        assert_ne!(h3.get(&f, Need::Whole).unwrap(), a);
        // Off: nothing.
        let mut off = FileHasher::new(HashMode::Off, &cache);
        off.start(vec![(f.clone(), Need::Whole)]);
        assert_eq!(off.get(&f, Need::Whole), None);
        // A missing file: no hash, a note.
        let mut m = FileHasher::new(HashMode::Cached, &cache);
        assert_eq!(m.get(&dir.path().join("missing"), Need::Whole), None);
        assert!(m.take_notes()[0].contains("cannot hash"));
    }

    #[test]
    fn several_files_hash_at_once_and_merge_into_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..4)
            .map(|i| {
                let f = dir.path().join(format!("m{i}.bin"));
                std::fs::write(&f, vec![i as u8; 1000 + i]).unwrap();
                f
            })
            .collect();
        let cache = dir.path().join("c");
        let mut a = FileHasher::new(HashMode::Cached, &cache);
        a.start(
            files[..2]
                .iter()
                .map(|f| (f.clone(), Need::Whole))
                .collect(),
        );
        a.join();
        let mut b = FileHasher::new(HashMode::Cached, &cache);
        b.start(
            files[2..]
                .iter()
                .map(|f| (f.clone(), Need::WholeAndData))
                .collect(),
        );
        for f in &files[2..] {
            assert_eq!(
                b.get(f, Need::WholeAndData).unwrap(),
                FileHashes::compute(f, true).unwrap()
            );
        }
        b.join();
        let saved: CacheFile =
            serde_json::from_slice(&std::fs::read(cache.join("hashes.json")).unwrap()).unwrap();
        assert_eq!(saved.files.len(), 4, "both runs' entries are kept");
        // A deleted file's entry goes at the next save.
        std::fs::remove_file(&files[0]).unwrap();
        let mut c = FileHasher::new(HashMode::Cached, &cache);
        c.start(vec![
            (files[1].clone(), Need::Whole),
            (dir.path().join("new.bin"), Need::Whole),
        ]);
        c.join();
        let saved: CacheFile =
            serde_json::from_slice(&std::fs::read(cache.join("hashes.json")).unwrap()).unwrap();
        assert_eq!(saved.files.len(), 3);
    }

    #[test]
    fn the_user_cache_folder() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            user_cache_dir(env(&[
                ("MGPU_CACHE_DIR", "/c"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            p("/c")
        );
        assert_eq!(
            user_cache_dir(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            p("/x/mgpu")
        );
        // A relative XDG_CACHE_HOME is invalid per the spec and ignored; empty means unset.
        assert_eq!(
            user_cache_dir(env(&[
                ("XDG_CACHE_HOME", "x"),
                ("MGPU_CACHE_DIR", ""),
                ("HOME", "/h")
            ])),
            p("/h/.cache/mgpu")
        );
        assert_eq!(user_cache_dir(env(&[])), None);
    }
}
