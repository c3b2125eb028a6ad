//! The run lock: `OUTPUT_ROOT/.mgpu.lock` (or `.mgpu-shard-I-of-N.lock` for `--shard I/N`), so
//! two runs never write the same images at once — on one host, in containers, and across hosts
//! sharing a file system.
//!
//! Two layers:
//! - a **kernel advisory lock** (`flock`, through `std::fs::File::try_lock`) on the lock file,
//!   held for the whole run: on one kernel (any container of this host, whatever its PID
//!   namespace) it is released by the kernel when the holder dies, so a lock file whose
//!   `flock` is free belongs to nobody; on NFS (v4, or v3 with lockd) Linux maps `flock` to
//!   byte-range locks that the server sees, so it works across hosts too;
//! - an **owner record** (JSON in the file): host, boot id
//!   (`/proc/sys/kernel/random/boot_id`), PID, process start time (`/proc/PID/stat`) and a
//!   heartbeat (UTC seconds) that a thread refreshes every [`HEARTBEAT`]. It names the holder
//!   in messages, and judges locks the kernel cannot: a record from *another* kernel (other
//!   host, other boot) is alive while its heartbeat is younger than [`STALE_AFTER`], so a
//!   shared file system without working `flock` (NFS mounted `nolock`, some FUSE) is still
//!   covered; on this kernel, a free `flock` means the holder is gone — PID reuse (PID 1 of
//!   the previous container) cannot fool it, and the recorded start time tells such a PID
//!   from the original process in the message.
//!
//! Rules: a run opens (creates) its own lock file and `flock`s it; then looks at every other
//! lock file of the root. It refuses to start ([`LockError::Held`], exit 75 "try again
//! later"), naming the holder, while a live run holds a conflicting lock: any lock, except
//! that different shards of the same `N` make disjoint images and may share a root (a Slurm
//! array or Indexed Job on a shared file system). A stale lock is taken over with a warning
//! ([`Takeover`]). Two runs starting at the same instant may both refuse, never both run.
//! After `flock` succeeds the file's inode is compared with the path's, so a lock file that
//! was removed meanwhile (by its releasing owner) is never mistaken for the live one.
//!
//! The lock is removed when the [`RunLock`] is dropped or [`RunLock::release`]d (the CLI also
//! removes it from its signal handler); after `kill -9` the next run takes it over.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Shard;

/// The unsharded lock file's name.
pub const LOCK_FILE: &str = ".mgpu.lock";

/// How often a holder refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A record from another kernel whose heartbeat is older than this is stale (6 missed
/// heartbeats; hosts' clocks must agree to well within this, as NTP keeps them).
pub const STALE_AFTER: Duration = Duration::from_secs(60);

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
    /// The kernel's boot id: equal boot ids mean one kernel, where `flock` is authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22): a
    /// reused PID has another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// Last sign of life, UTC seconds since 1970 (refreshed every [`HEARTBEAT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<u64>,
}

impl LockInfo {
    /// This process, now.
    pub fn this_process(shard: Option<Shard>, manifest: Option<&Path>) -> Self {
        let pid = std::process::id();
        LockInfo {
            pid,
            host: host_name(),
            started: utc_timestamp(SystemTime::now()),
            shard,
            manifest: manifest.map(|p| p.display().to_string()),
            boot_id: boot_id(),
            start_ticks: start_ticks(pid),
            heartbeat: Some(unix_now()),
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

    /// The same run (the heartbeat aside).
    pub fn same_owner(&self, other: &LockInfo) -> bool {
        self.pid == other.pid
            && self.host == other.host
            && self.started == other.started
            && self.boot_id == other.boot_id
            && self.start_ticks == other.start_ticks
            && self.shard == other.shard
    }

    /// Whether the holder may still be running, judged from the record alone, for a lock
    /// file whose `flock` is free (see the module doc). `Err` says why it is stale.
    pub fn judge_unlocked(&self, now: u64) -> Result<(), String> {
        let here = boot_id();
        match (&self.boot_id, &here) {
            (Some(theirs), Some(ours)) if theirs == ours => {
                // One kernel: a free flock means the holder is gone. A live process with the
                // recorded PID *and* start time would be an mgpu that does not flock (never
                // this version): respect it anyway.
                if pid_alive(self.pid)
                    && self.start_ticks.is_some()
                    && start_ticks(self.pid) == self.start_ticks
                {
                    return Ok(());
                }
                if pid_alive(self.pid) {
                    return Err(format!(
                        "PID {} is now another process (it started at another time: a restarted container's PID 1?)",
                        self.pid
                    ));
                }
                Err("that process is gone (killed?)".into())
            }
            (Some(_), _) => {
                // Another kernel: alive while its heartbeat beats.
                let beat = self.heartbeat.unwrap_or(0);
                let age = now.saturating_sub(beat);
                if age < STALE_AFTER.as_secs() {
                    return Ok(());
                }
                let what = if self.host == host_name() {
                    "this host restarted since"
                } else {
                    "its host stopped refreshing it (the run or the host died)"
                };
                Err(format!("its heartbeat is {age} s old: {what}"))
            }
            (None, _) => {
                // A record without a boot id (an older mgpu): PID check on this host only.
                if self.host != host_name() || pid_alive(self.pid) {
                    Ok(())
                } else {
                    Err("that process is gone (killed?)".into())
                }
            }
        }
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
    /// Why it was stale.
    pub reason: String,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "taking over the stale lock {} of {}: {}; its unfinished outputs are redone",
            self.path.display(),
            self.previous.describe(),
            self.reason
        )
    }
}

/// A held lock: the open, `flock`ed file and the heartbeat thread. Dropping it removes the
/// file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    info: LockInfo,
    file: Option<File>,
    heartbeat: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
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

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> LockError + 'a {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// What `try_lock` found.
enum Kernel {
    /// We hold the `flock` now.
    Ours,
    /// A live process holds it.
    Held,
    /// The file system does not support it: judge by the record alone.
    Unsupported,
}

fn try_flock(file: &File, path: &Path) -> Result<Kernel, LockError> {
    match file.try_lock() {
        Ok(()) => Ok(Kernel::Ours),
        Err(TryLockError::WouldBlock) => Ok(Kernel::Held),
        Err(TryLockError::Error(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) =>
        {
            Ok(Kernel::Unsupported)
        }
        Err(TryLockError::Error(e)) => Err(io(path, "lock")(e)),
    }
}

/// Whether the open `file` is still the file at `path` (not removed or replaced meanwhile).
fn still_there(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The record in an open lock file: `None` when empty (a run killed while creating it, or a
/// file we just created). A torn read of a heartbeat being rewritten is read again.
fn read_record(file: &mut File, root: &Path, path: &Path) -> Result<Option<LockInfo>, LockError> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(40));
        }
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(io(path, "read"))?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        match serde_json::from_str(&text) {
            Ok(info) => return Ok(Some(info)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(LockError::Foreign {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        reason: format!("it does not hold a PID, host and start time: {last}"),
    })
}

fn write_record(file: &File, info: &LockInfo) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(info).expect("a LockInfo always serialises") + "\n";
    // One positioned write, then cut what an older, longer record left: a reader sees the old
    // or the new record (or retries a torn one), never an empty file.
    file.write_all_at(json.as_bytes(), 0)?;
    file.set_len(json.len() as u64)?;
    file.sync_data()
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
        fs::create_dir_all(root).map_err(io(root, "create the output folder for"))?;
        let path = root.join(lock_file_name(info.shard));
        let mut takeovers = Vec::new();
        let mut attempts = 0;
        let file = loop {
            attempts += 1;
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(&path, "create"))?;
            let kernel = try_flock(&file, &path)?;
            if !still_there(&file, &path) && attempts < 8 {
                continue; // removed by its releasing owner meanwhile: open the new one
            }
            let previous = read_record(&mut file, root, &path)?;
            match (kernel, previous) {
                (Kernel::Held, Some(p)) => return Err(held(root, &path, p)),
                (Kernel::Held, None) => {
                    // Locked but not yet written: its owner is creating it right now.
                    return Err(held(root, &path, LockInfo::unknown(info.shard)));
                }
                (_, Some(p)) if !p.same_owner(&info) => {
                    if let Err(reason) = p.judge_unlocked(unix_now()) {
                        takeovers.push(Takeover {
                            path: path.clone(),
                            previous: p,
                            reason,
                        });
                    } else {
                        return Err(held(root, &path, p));
                    }
                }
                _ => {}
            }
            write_record(&file, &info).map_err(io(&path, "write"))?;
            break file;
        };
        let mut lock = RunLock {
            path: path.clone(),
            info: info.clone(),
            file: Some(file),
            heartbeat: None,
            released: false,
        };
        // Now every other lock of the root: conflicts refuse (and drop ours), stale ones go.
        let entries = fs::read_dir(root).map_err(io(root, "list the folder of"))?;
        let mut others: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| is_lock_file_name(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .filter(|p| *p != path)
            .collect();
        others.sort();
        for other in others {
            if let Some(t) = check_other(root, &other, &info)? {
                takeovers.push(t);
            }
        }
        lock.start_heartbeat();
        Ok((lock, takeovers))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    fn start_heartbeat(&mut self) {
        let Some(file) = self.file.as_ref().and_then(|f| f.try_clone().ok()) else {
            return;
        };
        let (tx, rx) = mpsc::channel::<()>();
        let mut info = self.info.clone();
        let spawned = std::thread::Builder::new()
            .name("mgpu-lock-heartbeat".into())
            .spawn(move || {
                // Ends when the lock drops its sender.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(HEARTBEAT) {
                    info.heartbeat = Some(unix_now());
                    let _ = write_record(&file, &info);
                }
            });
        if let Ok(handle) = spawned {
            self.heartbeat = Some((tx, handle));
        }
    }

    fn stop_heartbeat(&mut self) {
        if let Some((tx, handle)) = self.heartbeat.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Removes the lock file (if it is still ours) and releases the kernel lock.
    pub fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.stop_heartbeat();
        let r = remove_if_ours(&self.path, &self.info);
        self.file = None; // closing unlocks
        r
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if !self.released {
            self.stop_heartbeat();
            let _ = remove_if_ours(&self.path, &self.info);
            self.file = None;
        }
    }
}

impl LockInfo {
    /// Stands for a holder whose record is not written yet.
    fn unknown(shard: Option<Shard>) -> LockInfo {
        LockInfo {
            pid: 0,
            host: "(being created)".into(),
            started: "just now".into(),
            shard,
            manifest: None,
            boot_id: None,
            start_ticks: None,
            heartbeat: None,
        }
    }
}

/// Looks at another run's lock file: `Err` when it conflicts and is alive, a [`Takeover`]
/// when it was stale (and is removed now).
fn check_other(root: &Path, other: &Path, me: &LockInfo) -> Result<Option<Takeover>, LockError> {
    for _ in 0..8 {
        let mut file = match OpenOptions::new().read(true).write(true).open(other) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(other, "open")(e)),
        };
        let kernel = try_flock(&file, other)?;
        if !still_there(&file, other) {
            continue;
        }
        let holder = read_record(&mut file, root, other)?;
        let disjoint =
            |h: &LockInfo| matches!((me.shard, h.shard), (Some(a), Some(b)) if a.disjoint(b));
        match (kernel, holder) {
            (_, Some(h)) if disjoint(&h) => return Ok(None),
            (Kernel::Held, Some(h)) => return Err(held(root, other, h)),
            (Kernel::Held, None) => {
                return Err(held(root, other, LockInfo::unknown(shard_of_name(other))))
            }
            (_, None) => {
                // Empty and unlocked: a run killed while creating it.
                if shard_of_name(other).is_some_and(|s| me.shard.is_some_and(|m| m.disjoint(s))) {
                    return Ok(None);
                }
                let _ = fs::remove_file(other);
                return Ok(None);
            }
            (_, Some(h)) => {
                return match h.judge_unlocked(unix_now()) {
                    Ok(()) => Err(held(root, other, h)),
                    Err(reason) => {
                        // We hold its flock (when supported): nobody else takes it meanwhile.
                        fs::remove_file(other).map_err(io(other, "take over"))?;
                        Ok(Some(Takeover {
                            path: other.to_path_buf(),
                            previous: h,
                            reason,
                        }))
                    }
                };
            }
        }
    }
    Ok(None)
}

/// The shard a lock file's name says (`.mgpu-shard-I-of-N.lock`).
fn shard_of_name(path: &Path) -> Option<Shard> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix(".mgpu-shard-")?.strip_suffix(".lock")?;
    let (i, n) = rest.split_once("-of-")?;
    Shard::new(i.parse().ok()?, n.parse().ok()?).ok()
}

/// Removes the lock file at `path` if it holds `info`'s run (never another run's lock).
pub fn remove_if_ours(path: &Path, info: &LockInfo) -> Result<(), LockError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let theirs = serde_json::from_str::<LockInfo>(&text).ok();
            if theirs.is_some_and(|t| t.same_owner(info)) {
                fs::remove_file(path).map_err(io(path, "remove"))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "read")(e)),
    }
}

fn held(root: &Path, path: &Path, holder: LockInfo) -> LockError {
    let same_kernel = holder.boot_id.is_some() && holder.boot_id == boot_id();
    let hint = if same_kernel || (holder.boot_id.is_none() && holder.host == host_name()) {
        format!(
            "try again when it has finished (exit code 75 means exactly this), or stop it (kill {}); a lock left by a killed run is taken over automatically",
            holder.pid
        )
    } else {
        format!(
            "it runs on another host (or another boot of this one); its lock is taken over once its heartbeat is {} s old (or at once when the file system's locks say it is gone)",
            STALE_AFTER.as_secs()
        )
    };
    LockError::Held {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        holder: Box::new(holder),
        hint,
    }
}

/// UTC seconds since 1970.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This kernel's boot id (`None` where `/proc` does not say).
pub fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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
#[path = "lock_tests.rs"]
mod tests;
