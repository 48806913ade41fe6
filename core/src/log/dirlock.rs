//! One process per log directory: an exclusive lock on `<dir>/LOCK`, held while the log is
//! open.
//!
//! Opening a log repairs it (a torn tail is cut off, the last segment synced, a checkpoint
//! written on close), so a second process opening a directory that a running one writes to
//! would take the live writer's unsynced tail for a torn one and cut acknowledged events off.
//! The lock is the operating system's advisory file lock (`flock` on Linux): it goes with the
//! process, so a crashed or killed process leaves no lock behind, and a stale `LOCK` file is
//! harmless. The file holds the holder's process id, for the error message only.
//!
//! Within one process, a log that is being closed may still be held for a moment by the
//! threads that were using it (a writer thread ends once its last handle is dropped): an open
//! of a directory held in this process waits for the holder to let go, for at most
//! [`SAME_PROCESS_WAIT`], woken when it does (not polling). Two opens that are both meant to
//! stay open still fail, after that wait. Another process's lock is tried again for
//! [`OTHER_PROCESS_WAIT`] (a server that was just stopped, a test's twin whose threads are
//! ending), then reported.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::io_error;
use crate::error::{Error, Result};

/// The lock file's name in a log directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// How long an open waits for a log of the same directory, open in this process, to close.
pub(crate) const SAME_PROCESS_WAIT: Duration = Duration::from_secs(10);
/// How long an open waits for another process to let go of the directory.
pub(crate) const OTHER_PROCESS_WAIT: Duration = Duration::from_secs(2);

/// The directories whose log is open in this process, and a signal for each one closed.
static OPEN_HERE: (Mutex<BTreeSet<PathBuf>>, Condvar) = (Mutex::new(BTreeSet::new()), Condvar::new());

/// A held lock on a log directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub(crate) struct DirLock {
    /// Kept open: closing it releases the lock.
    file: Option<File>,
    /// The directory, as [`OPEN_HERE`] holds it.
    dir: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // The operating system's lock first, so a waiter woken below can take it.
        drop(self.file.take());
        let (open, closed) = &OPEN_HERE;
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.dir);
        closed.notify_all();
    }
}

impl DirLock {
    /// Takes the lock on `dir`, waiting a little for a holder that is closing (see the
    /// module documentation).
    ///
    /// # Errors
    /// [`Error::InUse`] when another open log (in this process or another) holds it; an I/O
    /// error when the lock file cannot be opened or locked.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        Self::acquire_within(dir, SAME_PROCESS_WAIT)
    }

    /// [`acquire`](DirLock::acquire), waiting at most `wait` for a holder in this process
    /// (and at most the shorter of `wait` and [`OTHER_PROCESS_WAIT`] for another process).
    pub(crate) fn acquire_within(dir: &Path, wait: Duration) -> Result<DirLock> {
        let key = dir.canonicalize().map_err(|e| io_error(format!("resolving {}", dir.display()), e))?;
        {
            let (open, closed) = &OPEN_HERE;
            let deadline = Instant::now() + wait;
            let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
            while open.contains(&key) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::InUse { dir: dir.to_owned(), holder: Some(std::process::id()) });
                }
                open = closed.wait_timeout(open, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            open.insert(key.clone());
        }
        // Registered: from here on, dropping the lock (on any error below too) unregisters it.
        let mut lock = DirLock { file: None, dir: key };
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(format!("opening {}", path.display()), e))?;
        // Another process that is closing the log (a server just stopped) lets go within
        // moments; the operating system has no timed wait for this lock, so it is tried again
        // every few milliseconds for a short while.
        let deadline = Instant::now() + wait.min(OTHER_PROCESS_WAIT);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                    return Err(Error::InUse { dir: dir.to_owned(), holder });
                }
                Err(TryLockError::Error(e)) => return Err(io_error(format!("locking {}", path.display()), e)),
            }
        }
        // Best effort: the id only makes the error message of the next opener more helpful.
        let pid = std::process::id().to_string();
        let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(pid.as_bytes()));
        if let Err(error) = written {
            tracing::debug!(%error, path = %path.display(), "could not write the process id into the lock file");
        }
        lock.file = Some(file);
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire_within(dir.path(), Duration::ZERO) {
            Err(Error::InUse { dir: named, holder }) => {
                assert_eq!(named, dir.path());
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        let again = DirLock::acquire(dir.path()).expect("free once dropped");
        drop(again);
        assert!(dir.path().join(LOCK_FILE).exists(), "the file stays; only the lock goes");
    }

    #[test]
    fn an_open_in_this_process_waits_for_a_holder_that_is_closing() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // Dropped by another thread once the waiter is registered... or before: either way
        // the second lock must be had, woken by the drop rather than timing out.
        let releaser = std::thread::spawn(move || drop(first));
        let started = Instant::now();
        let second = DirLock::acquire(dir.path()).expect("taken once the first is dropped");
        releaser.join().unwrap();
        assert!(started.elapsed() < SAME_PROCESS_WAIT, "woken, not timed out");
        drop(second);
    }

    #[test]
    fn the_operating_system_lock_is_held_too_so_another_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        // Another open file description, as another process would have: its lock conflicts.
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(held);
        other.try_lock().expect("released with the log");
    }
}
