//! Format sniffing and the one entry point for reading any checkpoint file.

use std::io::BufReader;
use std::path::Path;

use super::safetensors::read_safetensors;
use super::state_dict::read_state_dict_with;
use super::torch_zip::read_up_to;
use super::{CheckpointError, ReadOptions};
use crate::array::{read_npz, AnyArray};

/// The formats [`read_any`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Pth,
    Safetensors,
    Npz,
}

/// Tells the format from the file's first bytes, falling back on the extension.
pub fn file_kind(path: &Path) -> Result<FileKind, CheckpointError> {
    let mut f = crate::files::open_regular(path).map_err(CheckpointError::io(path))?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut f, &mut head).map_err(CheckpointError::io(path))?;
    let head = &head[..n];
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if head.starts_with(b"PK") {
        if ext == "npz" {
            return Ok(FileKind::Npz);
        }
        // A zip: a torch archive has `<top>/data.pkl`; otherwise take it as an npz.
        let f = crate::files::open_regular(path).map_err(CheckpointError::io(path))?;
        if let Ok(z) = zip::ZipArchive::new(BufReader::new(f)) {
            if z.file_names().any(|n| n.ends_with("/data.pkl")) {
                return Ok(FileKind::Pth);
            }
            if z.file_names().any(|n| n.ends_with(".npy")) {
                return Ok(FileKind::Npz);
            }
        }
        return Ok(FileKind::Pth);
    }
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(FileKind::Safetensors);
    }
    match ext.as_str() {
        "safetensors" => Ok(FileKind::Safetensors),
        "npz" => Ok(FileKind::Npz),
        // .pth/.pt/.bin/.ckpt and unknown: the torch reader gives the precise error (legacy
        // format, not a zip, ...).
        _ => Ok(FileKind::Pth),
    }
}

/// Reads the state dict of a `.pth`/`.pt`/`.bin` (torch zip), `.safetensors` or `.npz` file,
/// told apart by content (then extension).
pub fn read_any(path: &Path, opts: ReadOptions) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    match file_kind(path)? {
        FileKind::Pth => read_state_dict_with(path, opts),
        FileKind::Safetensors => read_safetensors(path, opts),
        FileKind::Npz => Ok(read_npz(path)?),
    }
}
