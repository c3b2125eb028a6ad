//! Tests of the run lock (`lock.rs`): takeovers of dead, PID-reused and silent locks; live
//! holders never taken over; shards; garbage files.

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
        boot_id: None,
        start_ticks: None,
        heartbeat: None,
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
    assert!(
        taken[0].to_string().contains("process is gone"),
        "{}",
        taken[0]
    );
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

/// #12: PID 1 of a previous container (same kernel, same PID, another start time) left a
/// lock; the restarted run must take it over instead of saying "kill 1".
#[test]
fn pid_1_of_a_previous_container_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let Some(boot) = boot_id() else {
        eprintln!("no /proc boot id here: skipped");
        return;
    };
    let mut stale = other(1, &host_name(), None);
    stale.boot_id = Some(boot);
    stale.start_ticks = Some(start_ticks(1).unwrap_or(0) + 123_456);
    fs::write(root.join(LOCK_FILE), serde_json::to_string(&stale).unwrap()).unwrap();
    let (lock, taken) = RunLock::acquire(root, None, None).unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(taken[0].reason.contains("another process"), "{}", taken[0]);
    assert_eq!(lock.info().pid, std::process::id());
}

/// #12: the kernel lock decides on one host: a live holder is refused whatever its record
/// says (here the record claims a dead PID), and the holder's own record is left alone.
#[test]
fn a_held_flock_is_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (lock, _) = RunLock::acquire(root, None, None).unwrap();
    let mut liar = other(dead_pid(), &host_name(), None);
    liar.boot_id = boot_id();
    fs::write(lock.path(), serde_json::to_string(&liar).unwrap()).unwrap();
    let e = RunLock::acquire(root, None, None).unwrap_err();
    assert!(matches!(e, LockError::Held { .. }), "{e}");
    assert!(e.to_string().contains("exit code 75"), "{e}");
    // And a shard of any split conflicts with it through the other-locks scan.
    let e = RunLock::acquire(root, Some(Shard::new(1, 2).unwrap()), None).unwrap_err();
    assert!(matches!(e, LockError::Held { .. }), "{e}");
    assert_eq!(lock_files(root), vec![root.join(LOCK_FILE)]);
}

/// #12: a lock written on another host is alive while its heartbeat beats and taken over
/// once it has stopped for STALE_AFTER.
#[test]
fn another_hosts_lock_lives_by_its_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut remote = other(4242, "node-17", None);
    remote.boot_id = Some("00000000-1111-2222-3333-444444444444".into());
    remote.heartbeat = Some(unix_now() - 5);
    fs::write(
        root.join(LOCK_FILE),
        serde_json::to_string(&remote).unwrap(),
    )
    .unwrap();
    let e = RunLock::acquire(root, None, None).unwrap_err().to_string();
    assert!(e.contains("on host `node-17`"), "{e}");
    assert!(e.contains("heartbeat"), "{e}");
    remote.heartbeat = Some(unix_now() - STALE_AFTER.as_secs() - 5);
    fs::write(
        root.join(LOCK_FILE),
        serde_json::to_string(&remote).unwrap(),
    )
    .unwrap();
    let (_lock, taken) = RunLock::acquire(root, None, None).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].reason.contains("heartbeat is"), "{}", taken[0]);
    // The same through the other-locks scan (a stale shard of another split).
    drop(_lock);
    let name = lock_file_name(Some(Shard::new(0, 4).unwrap()));
    remote.shard = Some(Shard::new(0, 4).unwrap());
    fs::write(root.join(&name), serde_json::to_string(&remote).unwrap()).unwrap();
    let (_lock, taken) = RunLock::acquire(root, Some(Shard::new(0, 3).unwrap()), None).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(!root.join(name).exists());
}

#[test]
fn the_record_names_kernel_process_and_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let (lock, _) = RunLock::acquire(dir.path(), None, None).unwrap();
    let on_disk: LockInfo =
        serde_json::from_str(&fs::read_to_string(lock.path()).unwrap()).unwrap();
    assert!(on_disk.same_owner(lock.info()));
    assert!(on_disk.heartbeat.unwrap() + 5 >= unix_now());
    if boot_id().is_some() {
        assert_eq!(on_disk.start_ticks, start_ticks(std::process::id()));
        assert!(on_disk.start_ticks.is_some());
    }
}

#[test]
fn an_empty_unlocked_lock_file_is_reused() {
    // A run killed between creating and writing its lock.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(LOCK_FILE), "").unwrap();
    fs::write(dir.path().join(".mgpu-shard-1-of-2.lock"), "").unwrap();
    let (_lock, taken) = RunLock::acquire(dir.path(), None, None).unwrap();
    assert!(taken.is_empty());
    assert_eq!(lock_files(dir.path()), vec![dir.path().join(LOCK_FILE)]);
}
