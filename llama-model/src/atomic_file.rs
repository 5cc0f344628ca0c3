//! The one way this workspace writes an output file: completely or not at all.
//!
//! The content goes to a temporary file in the target's folder (rename is only atomic within
//! one file system), which is flushed to disk (`fsync`) and renamed over the target; then the
//! folder itself is flushed, so that the rename survives a crash. A failure at any step removes
//! the temporary file: the target is either the complete new file or untouched.
//!
//! Files are created with the usual mode (0666 less the umask, so 0644 under the usual umask
//! 022), like `File::create`; a temporary-file crate's private 0600 would survive the rename.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    if is_special(path) {
        return OpenOptions::new().write(true).open(path)?.write_all(bytes);
    }
    let temp = temp_path_for(path);
    // `create_new` never clobbers a file someone else owns; a missing folder fails here,
    // before anything exists.
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| file.write_all(bytes));
    match written {
        Ok(()) => commit(&temp, path),
        Err(e) => {
            // Best effort: the write already failed, and that is the error to report.
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Makes the finished file `temp` (written by someone else, e.g. Burn's recorder) the file
/// `target`: flushes it, renames it over `target`, flushes the folder. On failure `temp` is
/// removed and `target` is untouched.
pub fn commit(temp: &Path, target: &Path) -> std::io::Result<()> {
    let result = File::open(temp)
        .and_then(|file| file.sync_all())
        .and_then(|()| std::fs::rename(temp, target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(temp);
        return Err(e);
    }
    sync_dir(parent_dir(target))
}

/// Flushes a folder's entries (the rename) to disk. Where a folder cannot be opened for
/// that (not on Unix), the rename is still done; only its durability is the platform's.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
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
}
