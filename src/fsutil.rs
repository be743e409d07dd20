//! Small file-system helpers shared by the CLI, the evaluation and the checkpoint writers:
//! atomic writes through [`tempfile`] (a temporary file in the destination's directory, synced,
//! then renamed into place, so a crash never leaves half a file).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory `path` will live in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `path` atomically: `body` fills a new temporary file beside it (named
/// `.<name>.tmp-XXXXXX`), which is synced and then moved into place: with `overwrite`, replacing
/// any existing file ([`tempfile::NamedTempFile::persist`]); without, failing with
/// [`io::ErrorKind::AlreadyExists`] if `path` exists, without a race
/// ([`tempfile::NamedTempFile::persist_noclobber`]). On any error the temporary file is removed.
pub fn write_atomic_with(
    path: &Path,
    overwrite: bool,
    body: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{}.tmp-", name.to_string_lossy())).tempfile_in(&dir)?;
    body(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    if overwrite {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    // Make the rename durable; not every platform can open a directory, which is fine.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (see [`write_atomic_with`]). Used for outputs the
/// user named explicitly (reports, results).
pub fn replace_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, true, |f| f.write_all(bytes))
}

/// Writes `bytes` to a new file `path` atomically; never overwrites: an existing `path` is an
/// [`io::ErrorKind::AlreadyExists`] error, decided at the rename, without a race.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, false, |f| f.write_all(bytes))
}
