//! Feeds arbitrary bytes to the `.safetensors` reader ([`read_safetensors_bytes`]), with and
//! without float16 widening. Malformed input must come back as a `CheckpointError`.

#![no_main]

use std::path::Path;

use beit_seg::checkpoint::{read_safetensors_bytes, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.safetensors");
    for opts in [ReadOptions::default(), ReadOptions { widen_half: true, opaque_globals: false }] {
        let _ = read_safetensors_bytes(data, name, opts);
    }
});
