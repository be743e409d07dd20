//! Feeds arbitrary bytes to the `.npy` parser ([`beit_seg::array::parse_npy`]). Every outcome
//! but a panic, a hang or an out-of-memory abort is fine: malformed input must come back as an
//! `ArrayError`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = beit_seg::array::parse_npy(data, Path::new("fuzz.npy"), None);
});
