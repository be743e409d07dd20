//! Feeds arbitrary bytes to the `.npz` reader ([`beit_seg::array::parse_npz`]) as a whole
//! archive, and as the single `.npy` entry of an otherwise valid stored and deflated archive (so
//! that the fuzzer reaches the entry parser and the CRC check without having to forge a zip).

#![no_main]

use std::io::{Cursor, Write};
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn npz(entry: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(method);
    z.start_file("a.npy", o).unwrap();
    z.write_all(entry).unwrap();
    z.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.npz");
    let _ = beit_seg::array::parse_npz(data, name);
    for m in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
        let _ = beit_seg::array::parse_npz(&npz(data, m), name);
    }
});
