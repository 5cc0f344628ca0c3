//! The one way this workspace writes an output file: completely or not at all.
//!
//! The content goes to a temporary file in the target's folder (rename is only atomic within
//! one file system) through a buffer whose flush is checked (a full disk fails the save
//! instead of leaving a truncated file), which is flushed to disk (`fsync`) and renamed over
//! the target; then the folder itself is flushed, so that the rename survives a crash. A
//! failure at any step removes the temporary file: the target is either the complete new
//! file or untouched.
//!
//! Files are created with the usual mode (0666 less the umask, so 0644 under the usual umask
//! 022), like `File::create`; a temporary-file crate's private 0600 would survive the rename.
//!
//! A process killed mid-save leaves its temporary file (`.NAME.tmp-PID-N`) behind;
//! [`remove_orphaned_temps`] removes those of processes that are gone.
//!
//! Test builds (the `test-support` feature, never a shipped binary) count every file
//! operation done here and, with `LLAMA_FAULT_AT=k` in the environment, abort the process
//! right after the k-th (see [`fault`]): a crash at every point of a save, reproducibly.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod fault;

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The folder `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fresh, unused name beside `target` for its temporary file:
/// `.NAME.tmp-PID-N` (hidden, and never the name of a finished output).
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_os_string());
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    parent_dir(target).join(temp)
}

/// Writes `bytes` to `path` atomically (see the [module docs](self)). The folder must
/// exist; an existing file is replaced. A target that is not a file (see [`is_special`]) is
/// written in place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// Writes what `write` streams to `path` atomically (see the [module docs](self)), through
/// a buffer: for content too large to hold twice in memory (a model's record). The folder
/// must exist; an existing file is replaced. A target that is not a file (see
/// [`is_special`]) is written in place.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if is_special(path) {
        let file = OpenOptions::new().write(true).open(path)?;
        return fill(file, write).map(drop);
    }
    let temp = temp_path_for(path);
    // `create_new` never clobbers a file someone else owns; a missing folder fails here,
    // before anything exists.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    fault::after("create", &temp);
    let written = fill(file, write).and_then(|file| {
        fault::after("write", &temp);
        file.sync_all()
    });
    if let Err(e) = written {
        // Best effort: the write already failed, and that is the error to report.
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    fault::after("fsync", &temp);
    rename_into_place(&temp, path)
}

/// `write` into `file` through a buffer, whose last flush is checked (`BufWriter`'s drop
/// would drop its error).
fn fill(
    file: File,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out)?;
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)
}

/// Makes the finished file `temp` (written by someone else) the file `target`: flushes it,
/// renames it over `target`, flushes the folder. On failure `temp` is removed and `target`
/// is untouched.
pub fn commit(temp: &Path, target: &Path) -> std::io::Result<()> {
    if let Err(e) = File::open(temp).and_then(|file| file.sync_all()) {
        let _ = std::fs::remove_file(temp);
        return Err(e);
    }
    fault::after("fsync", temp);
    rename_into_place(temp, target)
}

/// Renames the flushed `temp` over `target` and flushes the folder.
fn rename_into_place(temp: &Path, target: &Path) -> std::io::Result<()> {
    if let Err(e) = std::fs::rename(temp, target) {
        let _ = std::fs::remove_file(temp);
        return Err(e);
    }
    fault::after("rename", target);
    sync_dir(parent_dir(target))?;
    fault::after("fsync folder", parent_dir(target));
    Ok(())
}

/// Removes the finished file `path` (a missing one is not an error) and flushes its folder:
/// the delete half of a save that replaces files under new names.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    fault::after("remove", path);
    sync_dir(parent_dir(path))
}

/// Flushes a folder's entries (the rename) to disk. Where a folder cannot be opened for
/// that (not on Unix), the rename is still done; only its durability is the platform's.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The process id in a temporary file's name `.NAME.tmp-PID-N`, if it is one.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, counter) = tail.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` is gone. Where that cannot be told (no `/proc`), it is taken to
/// be alive: a file is only ever removed when its writer is known to be dead.
fn process_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

/// Removes the temporary files (`.NAME.tmp-PID-N`) that writers killed mid-save left in
/// `dir` itself (not below it), only those whose process is gone; returns the removed paths.
/// A missing folder holds none.
pub fn remove_orphaned_temps(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(temp_owner) else {
            continue;
        };
        if entry.file_type()?.is_file() && process_gone(pid) {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Whether `path` exists and is neither a regular file nor a folder: a device such as
/// `/dev/null` or `/dev/stdout`, or a FIFO. Such a target is written in place, as a shell
/// redirection would: renaming a file over it would replace the device itself (for root,
/// `/dev/null` became a plain file).
pub fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_device_target_is_written_in_place_not_replaced() {
        use std::io::Read;
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                File::open(fifo).unwrap().read_to_string(&mut text).unwrap();
                text
            })
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        let kind = std::fs::metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "still a FIFO");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file"
        );
        assert!(!is_special(dir.path()) && !is_special(&dir.path().join("absent")));
    }

    #[test]
    fn replaces_the_target_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.txt");
        write_atomic(&target, b"first").unwrap();
        write_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")]);
    }

    #[test]
    fn a_missing_folder_fails_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing/out.txt");
        assert!(write_atomic(&target, b"x").is_err());
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn a_failed_commit_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_path_for(&dir.path().join("a.txt"));
        std::fs::write(&temp, b"x").unwrap();
        // Renaming onto a path inside a missing folder fails.
        assert!(commit(&temp, &dir.path().join("missing/a.txt")).is_err());
        assert!(!temp.exists());
    }

    #[cfg(unix)]
    #[test]
    fn files_get_the_mode_file_create_gives() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("reference");
        File::create(&reference).unwrap();
        let target = dir.path().join("atomic");
        write_atomic(&target, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), mode(&reference));
    }

    #[test]
    fn a_failed_stream_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.mpk");
        write_atomic(&target, b"good").unwrap();
        let err = write_atomic_with(&target, |out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_temporary_files_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        let names = [
            format!(".model.mpk.tmp-{gone}-0"),
            format!(".model.mpk.tmp-{mine}-3"),
            format!("model.mpk.tmp-{gone}-0"),
            format!(".model.mpk.tmp-{gone}-x"),
            "resume.json".to_string(),
        ];
        for name in &names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join(&names[0]), b"x").unwrap();
        let removed = remove_orphaned_temps(dir.path()).unwrap();
        assert_eq!(removed, vec![dir.path().join(&names[0])]);
        for name in &names[1..] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        assert!(dir.path().join("sub").join(&names[0]).exists());
    }
}
