//! Feeds arbitrary bytes to the checkpoint readers: as a whole `torch.save` archive, as the
//! pickle (`data.pkl`) of an otherwise valid archive with a few storages, and as a
//! `.safetensors` file. Every outcome but a panic, a hang or an out-of-memory abort is fine:
//! malformed input must come back as a `CheckpointError`.

#![no_main]

use std::io::{Cursor, Write};
use std::path::Path;

use beit_seg::checkpoint::{load_pth_bytes, read_safetensors_bytes, state_dict_of, ReadOptions};
use libfuzzer_sys::fuzz_target;

/// A `torch.save`-style zip: `archive/data.pkl` = `pickle`, storages `archive/data/0..2`.
fn torch_zip(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", o).unwrap();
    z.write_all(storage).unwrap();
    z.start_file("archive/data/1", o).unwrap();
    z.write_all(&[0u8; 64]).unwrap();
    z.start_file("archive/data/2", o).unwrap();
    z.write_all(&[0x3c; 8]).unwrap();
    z.start_file("archive/version", o).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.pth");
    let modes = [ReadOptions::default(), ReadOptions { widen_half: true, opaque_globals: true }];
    for opts in modes {
        if let Ok(v) = load_pth_bytes(data, name, opts) {
            let _ = state_dict_of(v, name);
        }
    }
    // The first 64 bytes double as the storage bytes, the rest is the pickle.
    let (storage, pickle) = data.split_at(data.len().min(64));
    let z = torch_zip(pickle, storage);
    for opts in modes {
        if let Ok(v) = load_pth_bytes(&z, name, opts) {
            let _ = state_dict_of(v, name);
        }
    }
    let _ = read_safetensors_bytes(data, Path::new("fuzz.safetensors"), modes[1]);
});
