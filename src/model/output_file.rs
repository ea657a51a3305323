//! Writing an output file (`run --output`, `convert`, the tuning cache) the way coreutils would.
//!
//! - A regular file, or a path where nothing is yet, is replaced atomically: the bytes go to a
//!   hidden temporary file in the same folder, which is synced and renamed over the path, so a
//!   failure or an interruption never leaves a partial or clobbered file. A new file gets the
//!   mode the umask gives (`0666 & !umask`); a replaced file keeps its mode, and its owner and
//!   group where the process may set them.
//! - A symbolic link is followed to its target, which is written as above; a link whose target
//!   does not exist is refused, as `cp` refuses to write through a dangling link.
//! - A character device or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written
//!   directly: renaming over it would replace the device node with a regular file.
//! - A directory, a block device or a socket is refused with an error naming the path.
//!
//! The temporary files being written are listed in a process-wide registry, so that the CLI's
//! handler for SIGINT and SIGTERM can remove them ([`remove_unfinished_output_files`]) before it
//! exits; SIGKILL cannot be handled, and can leave one behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The temporary files being written now, for [`remove_unfinished_output_files`].
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Writes `bytes` to `path` as described in the module documentation.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = resolve_symbolic_link(path)?;
    let io_error = |source| Error::Io {
        path: target.display().to_string(),
        source,
    };
    match std::fs::metadata(&target) {
        Ok(metadata) if metadata.is_file() => replace_regular_file(&target, bytes, Some(&metadata)),
        Ok(metadata) if metadata.is_dir() => Err(io_error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory; name a file to write",
        ))),
        Ok(metadata) => write_special_file(&target, &metadata, bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            replace_regular_file(&target, bytes, None)
        }
        Err(error) => Err(io_error(error)),
    }
}

/// Removes the temporary files of writes still under way (none are, once every
/// [`write_file_atomically`] has returned). For a signal handler that is about to exit the
/// process: the outputs those writes would have replaced are left as they were.
pub fn remove_unfinished_output_files() {
    // A poisoned lock still holds a valid list.
    let unfinished = match UNFINISHED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    for path in unfinished.iter() {
        let _ = std::fs::remove_file(path);
    }
}

/// `path`, or the file a symbolic link at `path` leads to (through any chain of links).
fn resolve_symbolic_link(path: &Path) -> Result<PathBuf> {
    let is_link = std::fs::symlink_metadata(path)
        .map(|metadata| metadata.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        return Ok(path.to_path_buf());
    }
    std::fs::canonicalize(path).map_err(|source| {
        let target = std::fs::read_link(path)
            .map(|target| target.display().to_string())
            .unwrap_or_else(|_| "?".to_string());
        let reason = if source.kind() == std::io::ErrorKind::NotFound {
            format!(
                "is a symbolic link to {target}, which does not exist; not writing through a \
                 dangling link"
            )
        } else {
            format!("is a symbolic link to {target}, which cannot be followed: {source}")
        };
        Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(source.kind(), reason),
        }
    })
}

/// Writes a temporary file beside `target` and renames it over `target`; `existing` is the
/// metadata of the regular file it replaces, whose mode and ownership the new file takes.
fn replace_regular_file(
    target: &Path,
    bytes: &[u8],
    existing: Option<&std::fs::Metadata>,
) -> Result<()> {
    let io_error = |source| Error::Io {
        path: target.display().to_string(),
        source,
    };
    let folder = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".resgraph-").suffix(".partial");
    // The kernel applies the umask to the mode given at creation, as for any new file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut file = builder.tempfile_in(folder).map_err(io_error)?;
    let temporary = file.path().to_path_buf();
    register(&temporary, true);
    let written = (|| {
        file.write_all(bytes)?;
        if let Some(existing) = existing {
            keep_mode_and_owner(file.as_file(), existing)?;
        }
        file.as_file().sync_all()?;
        file.persist(target).map_err(|error| error.error)?;
        Ok(())
    })();
    register(&temporary, false);
    written.map_err(io_error)
}

/// Gives `file` the mode of the file it replaces, and its owner and group where the process may
/// (a root process replacing another user's file keeps it theirs).
fn keep_mode_and_owner(file: &std::fs::File, existing: &std::fs::Metadata) -> std::io::Result<()> {
    file.set_permissions(existing.permissions())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let current = file.metadata()?;
        if (current.uid(), current.gid()) != (existing.uid(), existing.gid()) {
            // Only a privileged process may give a file away; anyone else keeps their own.
            let _ = std::os::unix::fs::fchown(file, Some(existing.uid()), Some(existing.gid()));
        }
    }
    Ok(())
}

/// Writes into a character device or a FIFO directly; refuses block devices and sockets.
fn write_special_file(target: &Path, metadata: &std::fs::Metadata, bytes: &[u8]) -> Result<()> {
    let io_error = |source| Error::Io {
        path: target.display().to_string(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = metadata.file_type();
        if kind.is_char_device() || kind.is_fifo() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(target)
                .map_err(io_error)?;
            file.write_all(bytes).map_err(io_error)?;
            return file.flush().map_err(io_error);
        }
    }
    let what = describe_special_file(metadata);
    Err(io_error(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "is {what}; resgraph writes outputs to regular files, character devices and FIFOs only"
        ),
    )))
}

fn describe_special_file(metadata: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = metadata.file_type();
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    let _ = metadata;
    "neither a regular file nor a directory"
}

fn register(temporary: &Path, writing: bool) {
    let mut unfinished = match UNFINISHED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if writing {
        unfinished.push(temporary.to_path_buf());
    } else {
        unfinished.retain(|path| path != temporary);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_mode() {
        let folder = tempfile::tempdir().expect("folder");
        let fresh = folder.path().join("fresh.npy");
        write_file_atomically(&fresh, b"one").expect("write");
        // The umask of the test process is unknown; a file it creates itself shows its mode.
        let probe = folder.path().join("probe");
        std::fs::File::create(&probe).expect("probe");
        assert_eq!(mode(&fresh), mode(&probe));

        let existing = folder.path().join("existing.npy");
        std::fs::write(&existing, b"old").expect("old");
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        write_file_atomically(&existing, b"new").expect("replace");
        assert_eq!(std::fs::read(&existing).expect("read"), b"new");
        assert_eq!(mode(&existing), 0o640);
    }

    #[test]
    fn a_symbolic_link_is_written_through_and_a_dangling_one_is_refused() {
        let folder = tempfile::tempdir().expect("folder");
        let target = folder.path().join("target.npy");
        std::fs::write(&target, b"old").expect("old");
        let link = folder.path().join("link.npy");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_file_atomically(&link, b"new").expect("write through");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).expect("target"), b"new");

        let dangling = folder.path().join("dangling.npy");
        std::os::unix::fs::symlink(folder.path().join("nowhere.npy"), &dangling).expect("link");
        let error = write_file_atomically(&dangling, b"x").expect_err("dangling");
        assert!(error.to_string().contains("dangling"), "{error}");
        assert!(!folder.path().join("nowhere.npy").exists());
    }

    #[test]
    fn a_character_device_is_written_directly_and_a_directory_is_refused() {
        write_file_atomically(Path::new("/dev/null"), b"discarded").expect("/dev/null");
        let kind = std::fs::metadata("/dev/null")
            .expect("/dev/null")
            .file_type();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&kind));

        let folder = tempfile::tempdir().expect("folder");
        let error = write_file_atomically(folder.path(), b"x").expect_err("directory");
        assert!(error.to_string().contains("is a directory"), "{error}");
        let leftovers: Vec<_> = std::fs::read_dir(folder.path()).expect("list").collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_fifo_is_written_directly() {
        let folder = tempfile::tempdir().expect("folder");
        let fifo = folder.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).expect("read the fifo"))
        };
        write_file_atomically(&fifo, b"through the pipe").expect("write");
        assert_eq!(reader.join().expect("reader"), b"through the pipe");
        let kind = std::fs::metadata(&fifo).expect("fifo").file_type();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&kind));
    }
}
