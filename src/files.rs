//! File-system helpers shared by every reader and writer of the crate (CLI, evaluation,
//! checkpoints, images, conformance): the one place that decides which files are read and how
//! outputs are written (docs/security.md, "Files read and written").
//!
//! **Reading.** Only regular files are read: [`check_regular`] stats the path (following
//! symlinks) and refuses a FIFO, a character or block device, a socket or a directory by name
//! *before* opening it (so opening a FIFO never blocks, and `/dev/zero` is never read to the
//! end); [`open_regular`] opens with `O_NONBLOCK` and checks the opened file again;
//! [`read_regular`] also bounds the length before allocating.
//!
//! **Writing.** [`write_output`] (and its wrappers) writes a file atomically: the body fills a
//! new temporary file beside the target (`.<name>.tmp-XXXXXX`), which is synced, given the mode a
//! normal create would give (`0666 & !umask`, or the replaced file's mode), and renamed into
//! place. Before anything is written, [`check_output`] refuses a target that is not a regular
//! file (a device, FIFO, socket or directory), even with `force`; an existing regular file
//! without `force`; and a target that is the same file (device + inode, after following
//! symlinks) as one of the command's inputs, even with `force`. Temporary files are registered
//! while they exist, so that the CLI's signal handler removes them on SIGINT / SIGTERM
//! ([`remove_temp_files`]).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

// ------------------------------------------------------------------------------ reading

/// What kind of file `md` describes, in words (`a FIFO (named pipe)`, `a character device`...).
pub fn kind_of(md: &Metadata) -> &'static str {
    let ft = md.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn not_regular(md: &Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {}, not a regular file (only regular files are read)", kind_of(md)),
    )
}

/// Checks that `path` is a regular file (after following symlinks) without opening it; returns
/// its metadata. A FIFO, device, socket or directory is an [`io::ErrorKind::InvalidInput`]
/// error saying what it is (the caller adds the path). Every reader of the crate calls this (or
/// [`open_regular`] / [`read_regular`]) before opening a file it did not create.
pub fn check_regular(path: &Path) -> io::Result<Metadata> {
    let md = std::fs::metadata(path)?;
    if md.is_file() {
        Ok(md)
    } else {
        Err(not_regular(&md))
    }
}

/// Opens a regular file for reading: [`check_regular`] first, then `open` with `O_NONBLOCK`
/// (a FIFO swapped in between the two does not block), then the opened file is checked again.
pub fn open_regular(path: &Path) -> io::Result<File> {
    check_regular(path)?;
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let f = o.open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(not_regular(&md));
    }
    Ok(f)
}

/// Reads a regular file of at most `max_len` bytes (see [`open_regular`]); the length is checked
/// before anything is allocated, and a file that grows while it is read is cut off at
/// `max_len + 1` bytes and refused.
pub fn read_regular(path: &Path, max_len: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max_len {
        return Err(too_large(len, max_len));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len as usize)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, format!("cannot allocate {len} bytes to read it")))?;
    f.take(max_len.saturating_add(1)).read_to_end(&mut v)?;
    if v.len() as u64 > max_len {
        return Err(too_large(v.len() as u64, max_len));
    }
    Ok(v)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_to_string(path: &Path, max_len: u64) -> io::Result<String> {
    let v = read_regular(path, max_len)?;
    String::from_utf8(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("is {len} bytes, more than the {max} bytes allowed for this kind of file"),
    )
}

/// The most bytes of a JSON / text file (configs, case manifests, reports, name maps) that are
/// read: 256 MiB.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

// ------------------------------------------------------------------------------ identity

/// Whether `a` and `b` name the same existing file (device and inode after following symlinks;
/// on other platforms, equal canonical paths).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

// ------------------------------------------------------------------------------ locking

/// Takes an advisory lock (`flock`) on `f` without waiting: exclusive (a writer) or shared (a
/// reader). `Ok(false)` when another open file holds a conflicting lock. The lock lasts while
/// `f` is open. On platforms without `flock` it always succeeds.
pub fn try_lock(f: &File, exclusive: bool) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
        // SAFETY: flock on a file descriptor owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(e)
    }
    #[cfg(not(unix))]
    {
        let _ = (f, exclusive);
        Ok(true)
    }
}

// ------------------------------------------------------------------------------ writing

/// Checks that `path` may be written as an output of a command whose inputs are `inputs`
/// (nothing is written): it must not be the same file as an input (even with `force`); if it
/// exists it must be a regular file (never a device, FIFO, socket or directory, even with
/// `force`) and `force` must be set. Errors are [`io::Error`]s whose text says why (the caller
/// adds the path): [`io::ErrorKind::AlreadyExists`] for an existing file without `force`,
/// [`io::ErrorKind::InvalidInput`] otherwise.
pub fn check_output(path: &Path, force: bool, inputs: &[&Path]) -> io::Result<()> {
    if path.file_name().is_none() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is not a file path"));
    }
    for i in inputs {
        if same_file(path, i) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "is also an input of this command ({}); an output never replaces an input, choose another output",
                    i.display()
                ),
            ));
        }
    }
    match std::fs::metadata(path) {
        Ok(md) if !md.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is {}, not a regular file; outputs are only written over regular files (not even with --force)",
                kind_of(&md)
            ),
        )),
        Ok(_) if !force => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, "already exists (pass --force to replace it)"))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink: renaming over it would drop the link; refuse without force.
            match std::fs::symlink_metadata(path) {
                Ok(_) if !force => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "already exists as a dangling symbolic link (pass --force to replace it)",
                )),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// The directory `path` will live in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Temporary files that exist now (removed by [`remove_temp_files`] on a signal).
static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn temps() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes every temporary file of an atomic write in progress, and keeps any other thread from
/// finishing one (the registry stays locked: call this only right before the process exits,
/// as the CLI's SIGINT / SIGTERM handler does).
pub fn remove_temp_files() {
    let guard = temps();
    for p in guard.iter() {
        let _ = std::fs::remove_file(p);
    }
    std::mem::forget(guard);
}

/// The process's umask (from `/proc/self/status`, else by setting and restoring it).
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            if let Some(m) = s.lines().find_map(|l| l.strip_prefix("Umask:")) {
                if let Ok(v) = u32::from_str_radix(m.trim(), 8) {
                    return v;
                }
            }
        }
        #[cfg(unix)]
        {
            // SAFETY: umask only sets the process's file mode mask; it is restored at once.
            let old = unsafe { libc::umask(0o022) };
            unsafe { libc::umask(old) };
            old as u32
        }
        #[cfg(not(unix))]
        0o022
    })
}

/// Writes output `path` atomically (see the module doc): [`check_output`] first (`force`,
/// `inputs`), then `body` fills a temporary file beside it, which is synced, given the final
/// mode and renamed into place (with `force`, replacing the file; without, failing with
/// [`io::ErrorKind::AlreadyExists`] if one appeared meanwhile, without a race). On any error the
/// temporary file is removed and `path` is untouched.
pub fn write_output(
    path: &Path,
    force: bool,
    inputs: &[&Path],
    body: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    check_output(path, force, inputs)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = parent_dir(path);
    let mode = match std::fs::metadata(path) {
        #[cfg(unix)]
        Ok(md) => {
            use std::os::unix::fs::PermissionsExt;
            md.permissions().mode() & 0o7777
        }
        _ => 0o666 & !umask(),
    };
    let mut tmp = {
        let mut reg = temps();
        let t = tempfile::Builder::new().prefix(&format!(".{}.tmp-", name.to_string_lossy())).tempfile_in(&dir)?;
        reg.push(t.path().to_path_buf());
        t
    };
    let tmp_path = tmp.path().to_path_buf();
    let unregister = || temps().retain(|p| p != &tmp_path);
    let result = (|| {
        body(tmp.as_file_mut())?;
        test_stall();
        tmp.as_file_mut().flush()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        tmp.as_file().sync_all()
    })();
    if let Err(e) = result {
        unregister();
        return Err(e);
    }
    {
        // Rename under the registry lock, so a signal handler never removes a file that is
        // being moved into place.
        let mut reg = temps();
        let r = if force { tmp.persist(path).map(|_| ()) } else { tmp.persist_noclobber(path).map(|_| ()) };
        reg.retain(|p| p != &tmp_path);
        drop(reg);
        r.map_err(|e| {
            let err = e.error;
            if err.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(io::ErrorKind::AlreadyExists, "already exists (pass --force to replace it)")
            } else {
                err
            }
        })?;
    }
    // Make the rename durable; not every platform can open a directory, which is fine.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A test hook: `BEIT_SEG_TEST_STALL_WRITE_MS=N` waits N ms after a temporary file is written
/// and before it is renamed (so that tests can interrupt a write in progress).
fn test_stall() {
    if let Some(ms) = std::env::var_os("BEIT_SEG_TEST_STALL_WRITE_MS").and_then(|v| v.to_str()?.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// [`write_output`] of bytes held in memory.
pub fn write_output_bytes(path: &Path, force: bool, inputs: &[&Path], bytes: &[u8]) -> io::Result<()> {
    write_output(path, force, inputs, |f| f.write_all(bytes))
}

/// Writes `path` atomically: `overwrite` is `force` of [`write_output`] (no inputs to protect).
pub fn write_atomic_with(
    path: &Path,
    overwrite: bool,
    body: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    write_output(path, overwrite, &[], body)
}

/// Replaces `path` with `bytes` atomically (a regular file or a new path only; see
/// [`write_output`]). For files a command owns (an evaluation's `metrics.json`).
pub fn replace_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_output_bytes(path, true, &[], bytes)
}

/// Writes `bytes` to a new file `path` atomically; never overwrites: an existing `path` is an
/// [`io::ErrorKind::AlreadyExists`] error, decided at the rename, without a race.
pub fn write_new_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_output_bytes(path, false, &[], bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_keep_the_umask_mode_and_refuse_non_regular_targets() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        write_new_atomic(&p, b"x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !umask(), "{mode:o}");
        }
        let e = write_new_atomic(&p, b"y").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        // Not over itself as an input.
        let e = write_output_bytes(&p, true, &[&p], b"z").unwrap_err();
        assert!(e.to_string().contains("also an input"), "{e}");
        // A symlink to /dev/null is a character device: refused even with force.
        #[cfg(unix)]
        {
            let l = d.path().join("null");
            std::os::unix::fs::symlink("/dev/null", &l).unwrap();
            let e = write_output_bytes(&l, true, &[], b"z").unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
            assert!(std::fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
            let e = read_regular(&l, 10).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
        }
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert!(left.iter().all(|e| !e.file_name().to_string_lossy().contains(".tmp-")));
    }
}
