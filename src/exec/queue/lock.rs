//! The run lock: `OUTPUT_ROOT/.mgpu.lock` (or `.mgpu-shard-I-of-N.lock` for `--shard I/N`)
//! holds the owner's PID, host and start time as JSON, so two runs never write the same output
//! root at once.
//!
//! Rules:
//! - a run creates its lock file exclusively (`O_EXCL`), then looks at every other lock file
//!   of the root; it refuses to start, naming the holder, when a live run holds a lock that
//!   conflicts: any lock, except that different shards of the same `N` make disjoint images
//!   and may share a root (a Slurm array on a shared file system);
//! - a lock whose PID is gone *on this host* is stale (the run was killed): it is taken over
//!   with a warning ([`Takeover`]). A lock from another host cannot be checked and counts as
//!   held; the message says how to remove it;
//! - the lock is removed when the [`RunLock`] is dropped or [`RunLock::release`]d (the CLI also
//!   removes it from its Ctrl-C handler); after `kill -9` the next run takes it over.
//!
//! Creating our file before looking at the others means two runs starting at the same instant
//! may both refuse, never both run. Taking over renames the stale file aside first and checks
//! it is still the stale one, so two runs taking over the same stale lock cannot both win.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Shard;

/// The unsharded lock file's name.
pub const LOCK_FILE: &str = ".mgpu.lock";

/// What a lock file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    /// UTC, RFC 3339 (`2026-11-26T14:03:12Z`).
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The manifest the run works on, for the message a second run prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl LockInfo {
    /// This process, now.
    pub fn this_process(shard: Option<Shard>, manifest: Option<&Path>) -> Self {
        LockInfo {
            pid: std::process::id(),
            host: host_name(),
            started: utc_timestamp(SystemTime::now()),
            shard,
            manifest: manifest.map(|p| p.display().to_string()),
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "process {} on host `{}`, started {}",
            self.pid, self.host, self.started
        );
        if let Some(m) = &self.manifest {
            s.push_str(&format!(", running {m}"));
        }
        if let Some(sh) = self.shard {
            s.push_str(&format!(" (shard {sh})"));
        }
        s
    }

    /// Whether the holder may still be running: its PID exists on this host, or it is on
    /// another host (which cannot be checked).
    pub fn may_be_alive(&self) -> bool {
        self.host != host_name() || pid_alive(self.pid)
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another mgpu run is writing to {}: {}\n  lock file: {}\n  {hint}", root.display(), holder.describe(), path.display())]
    Held {
        root: PathBuf,
        path: PathBuf,
        holder: Box<LockInfo>,
        hint: String,
    },
    #[error("{} is not an mgpu lock file ({reason}); if no mgpu run uses {}, delete it", path.display(), root.display())]
    Foreign {
        root: PathBuf,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot {op} the lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

/// A stale lock that was taken over (print it as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub path: PathBuf,
    pub previous: LockInfo,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "taking over the stale lock {} of {}: that process is gone (killed?); its unfinished outputs are redone",
            self.path.display(),
            self.previous.describe()
        )
    }
}

/// A held lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    info: LockInfo,
    released: bool,
}

/// The lock file name of a run: `.mgpu.lock`, or `.mgpu-shard-I-of-N.lock`.
pub fn lock_file_name(shard: Option<Shard>) -> String {
    match shard {
        None => LOCK_FILE.to_string(),
        Some(s) => format!(".mgpu-shard-{}-of-{}.lock", s.index(), s.count()),
    }
}

fn is_lock_file_name(name: &str) -> bool {
    name == LOCK_FILE || (name.starts_with(".mgpu-shard-") && name.ends_with(".lock"))
}

impl RunLock {
    /// Takes the lock of `root` (created if missing) for a run of `manifest` (and `shard`).
    /// Returns the stale locks it took over.
    pub fn acquire(
        root: &Path,
        shard: Option<Shard>,
        manifest: Option<&Path>,
    ) -> Result<(RunLock, Vec<Takeover>), LockError> {
        let info = LockInfo::this_process(shard, manifest);
        Self::acquire_as(root, info)
    }

    /// [`RunLock::acquire`] with a given identity (tests pretend to be other processes).
    pub fn acquire_as(root: &Path, info: LockInfo) -> Result<(RunLock, Vec<Takeover>), LockError> {
        fs::create_dir_all(root).map_err(|e| LockError::Io {
            path: root.to_path_buf(),
            op: "create the output folder for",
            source: e,
        })?;
        let path = root.join(lock_file_name(info.shard));
        let mut takeovers = Vec::new();
        let json = serde_json::to_string_pretty(&info).expect("a LockInfo always serialises");
        // Create ours; a stale one in the way is taken over (a few times at most: a live run
        // that keeps appearing is refused below).
        let mut attempts = 0;
        loop {
            attempts += 1;
            match create_exclusive(&path, &json) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 4 => {
                    let holder = read_lock(root, &path)?;
                    let Some(holder) = holder else { continue };
                    if holder.may_be_alive() {
                        return Err(held(root, &path, holder));
                    }
                    if let Some(t) = take_over(root, &path, &holder)? {
                        takeovers.push(t);
                    }
                }
                Err(e) => {
                    return Err(LockError::Io {
                        path,
                        op: "create",
                        source: e,
                    })
                }
            }
        }
        let lock = RunLock {
            path: path.clone(),
            info: info.clone(),
            released: false,
        };
        // Now every other lock of the root: conflicts refuse (and drop ours), stale ones go.
        let entries = fs::read_dir(root).map_err(|e| LockError::Io {
            path: root.to_path_buf(),
            op: "list the folder of",
            source: e,
        })?;
        let mut others: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| is_lock_file_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .filter(|p| *p != path)
            .collect();
        others.sort();
        for other in others {
            let Some(holder) = read_lock(root, &other)? else {
                continue;
            };
            let disjoint =
                matches!((info.shard, holder.shard), (Some(a), Some(b)) if a.disjoint(b));
            if disjoint {
                continue;
            }
            if holder.may_be_alive() {
                return Err(held(root, &other, holder)); // `lock` drops: ours is removed
            }
            if let Some(t) = take_over(root, &other, &holder)? {
                takeovers.push(t);
            }
        }
        Ok((lock, takeovers))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Removes the lock file (if it is still ours).
    pub fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        remove_if_ours(&self.path, &self.info)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if !self.released {
            let _ = remove_if_ours(&self.path, &self.info);
        }
    }
}

/// Removes the lock file at `path` if it holds `info` (never another run's lock).
pub fn remove_if_ours(path: &Path, info: &LockInfo) -> Result<(), LockError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            if serde_json::from_str::<LockInfo>(&text).ok().as_ref() == Some(info) {
                fs::remove_file(path).map_err(|e| LockError::Io {
                    path: path.to_path_buf(),
                    op: "remove",
                    source: e,
                })?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LockError::Io {
            path: path.to_path_buf(),
            op: "read",
            source: e,
        }),
    }
}

fn held(root: &Path, path: &Path, holder: LockInfo) -> LockError {
    let hint = if holder.host == host_name() {
        format!(
            "wait for it to finish, or stop it (kill {}); a lock left by a killed run is taken over automatically",
            holder.pid
        )
    } else {
        format!(
            "it runs on another host, which this run cannot check: if it is no longer running there, delete {}",
            path.display()
        )
    };
    LockError::Held {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        holder: Box::new(holder),
        hint,
    }
}

fn create_exclusive(path: &Path, json: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = f.write_all(json.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// The lock at `path`; `None` if it vanished meanwhile.
fn read_lock(root: &Path, path: &Path) -> Result<Option<LockInfo>, LockError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LockError::Io {
                path: path.to_path_buf(),
                op: "read",
                source: e,
            })
        }
    };
    if text.is_empty() {
        // A run killed between creating and writing its lock (or one writing right now):
        // give it a moment, then judge by what it wrote.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let again = fs::read_to_string(path).unwrap_or_default();
        if again.is_empty() {
            return Err(LockError::Foreign {
                root: root.to_path_buf(),
                path: path.to_path_buf(),
                reason: "it is empty: a run was probably killed while creating it".into(),
            });
        }
        return read_lock(root, path);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LockError::Foreign {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            reason: format!("it does not hold a PID, host and start time: {e}"),
        })
}

/// Moves the stale lock `path` (held by `stale`) aside and removes it, unless another run took
/// it over first (then that run's fresh lock is put back and `None` returned).
fn take_over(root: &Path, path: &Path, stale: &LockInfo) -> Result<Option<Takeover>, LockError> {
    let aside = path.with_extension(format!("stale-{}", std::process::id()));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LockError::Io {
                path: path.to_path_buf(),
                op: "take over",
                source: e,
            })
        }
    }
    let moved = read_lock(root, &aside)?;
    if moved.as_ref() == Some(stale) {
        let _ = fs::remove_file(&aside);
        return Ok(Some(Takeover {
            path: path.to_path_buf(),
            previous: stale.clone(),
        }));
    }
    // We moved someone's fresh lock: put it back without clobbering (hard links never
    // replace), then let the caller look again.
    let _ = fs::hard_link(&aside, path);
    let _ = fs::remove_file(&aside);
    Ok(None)
}

/// Whether a process with this PID exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true // cannot check: never take over
    }
}

/// This machine's host name (`unknown` when the OS does not say).
pub fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
        // when the name fits (we also stop at the buffer's end).
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let name = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !name.is_empty() {
                return name;
            }
        }
        "unknown".into()
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
    }
}

/// `t` as UTC RFC 3339 with whole seconds (`2026-11-26T14:03:12Z`).
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The lock files in `root` (for tests and diagnostics).
pub fn lock_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| is_lock_file_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dead_pid() -> u32 {
        // A child that has exited and been reaped: its PID is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn other(pid: u32, host: &str, shard: Option<Shard>) -> LockInfo {
        LockInfo {
            pid,
            host: host.into(),
            started: "2026-01-01T00:00:00Z".into(),
            shard,
            manifest: Some("m.toml".into()),
        }
    }

    #[test]
    fn timestamps() {
        let t = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(t(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn second_run_is_refused_naming_the_holder_and_release_removes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        let (lock, taken) = RunLock::acquire(&root, None, Some(Path::new("demo.toml"))).unwrap();
        assert!(taken.is_empty());
        assert!(root.join(LOCK_FILE).is_file());
        let text = fs::read_to_string(root.join(LOCK_FILE)).unwrap();
        let info: LockInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.host, host_name());
        // This process is alive, so a second acquisition is refused.
        let e = RunLock::acquire(&root, None, None).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {} on host", std::process::id())),
            "{e}"
        );
        assert!(e.contains("running demo.toml"), "{e}");
        assert!(e.contains(".mgpu.lock"), "{e}");
        // A shard conflicts with an unsharded run too.
        let e = RunLock::acquire(&root, Some(Shard::new(0, 2).unwrap()), None).unwrap_err();
        assert!(matches!(e, LockError::Held { .. }));
        assert_eq!(
            lock_files(&root),
            vec![root.join(LOCK_FILE)],
            "refused runs leave nothing"
        );
        lock.release().unwrap();
        assert!(lock_files(&root).is_empty());
        let (lock, _) = RunLock::acquire(&root, None, None).unwrap();
        drop(lock);
        assert!(lock_files(&root).is_empty(), "drop releases");
    }

    #[test]
    fn stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stale = other(dead_pid(), &host_name(), None);
        fs::write(root.join(LOCK_FILE), serde_json::to_string(&stale).unwrap()).unwrap();
        let (lock, taken) = RunLock::acquire(root, None, None).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].previous, stale);
        assert!(taken[0].to_string().contains("stale lock"), "{}", taken[0]);
        assert_eq!(lock.info().pid, std::process::id());
        let now: LockInfo =
            serde_json::from_str(&fs::read_to_string(root.join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(&now, lock.info());
        // Nothing left aside.
        assert_eq!(fs::read_dir(root).unwrap().count(), 1);
    }

    #[test]
    fn lock_of_another_host_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let remote = other(dead_pid(), "some-other-host", None);
        fs::write(
            root.join(LOCK_FILE),
            serde_json::to_string(&remote).unwrap(),
        )
        .unwrap();
        let e = RunLock::acquire(root, None, None).unwrap_err().to_string();
        assert!(e.contains("on host `some-other-host`"), "{e}");
        assert!(e.contains("runs on another host"), "{e}");
    }

    #[test]
    fn shards_of_one_split_share_a_root_others_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let me = std::process::id();
        let s = |i, n| Some(Shard::new(i, n).unwrap());
        let (a, _) = RunLock::acquire_as(root, other(me, &host_name(), s(0, 3))).unwrap();
        let (b, _) = RunLock::acquire_as(root, other(me, &host_name(), s(1, 3))).unwrap();
        assert_eq!(lock_files(root).len(), 2);
        // Same shard again, another split, or an unsharded run: refused.
        for shard in [s(1, 3), s(0, 2), None] {
            let e = RunLock::acquire_as(root, other(me, &host_name(), shard));
            assert!(matches!(e, Err(LockError::Held { .. })), "{shard:?}");
        }
        assert_eq!(lock_files(root).len(), 2);
        drop((a, b));
        assert!(lock_files(root).is_empty());
        // A stale shard lock of another split is taken over by an unsharded run.
        let stale = other(dead_pid(), &host_name(), s(2, 5));
        let name = lock_file_name(stale.shard);
        fs::write(root.join(&name), serde_json::to_string(&stale).unwrap()).unwrap();
        let (_l, taken) = RunLock::acquire(root, None, None).unwrap();
        assert_eq!(taken.len(), 1);
        assert!(!root.join(name).exists());
    }

    #[test]
    fn garbage_lock_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), "hello").unwrap();
        let e = RunLock::acquire(dir.path(), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an mgpu lock file"), "{e}");
        assert!(e.contains("delete it"), "{e}");
    }

    #[test]
    fn release_never_removes_another_runs_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, _) = RunLock::acquire(dir.path(), None, None).unwrap();
        let path = lock.path().to_path_buf();
        let intruder = other(1, "elsewhere", None);
        fs::write(&path, serde_json::to_string(&intruder).unwrap()).unwrap();
        lock.release().unwrap();
        assert!(path.exists());
    }
}
