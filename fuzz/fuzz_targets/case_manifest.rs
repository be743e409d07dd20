//! Feeds arbitrary bytes to the fixture manifest reader ([`beit_seg::conformance::case::Case::parse`],
//! the text of a `case.json`; it touches no file), then asks the parsed case what `verify` asks
//! it before reading any tensor: each output's tolerance and the file fields a kind names
//! (checked to stay inside the case directory). Every outcome but a panic, an abort, a hang or an
//! out-of-memory abort is fine: malformed input must come back as a `CaseError`.

#![no_main]

use std::path::Path;

use beit_seg::conformance::case::{inside_case, Case};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(case) = Case::parse(text, Path::new("fuzz-case")) else { return };
    for (name, file) in &case.outputs {
        let _ = case.tolerance_for(name);
        assert!(file.is_relative(), "output `{name}` resolves outside the case: {}", file.display());
    }
    let _ = case.kind.name();
    for key in ["weights", "config", "checkpoint", "image", "inputs", "data", "truth"] {
        if let Ok(p) = case.file_field(key) {
            assert!(p.starts_with("fuzz-case"), "`{key}` resolves outside the case: {}", p.display());
        }
    }
    if let Some(inputs) = case.manifest.get("inputs").and_then(|v| v.as_object()) {
        for name in inputs.keys() {
            if let Ok(p) = case.input_file(name) {
                assert!(p.starts_with("fuzz-case"), "input `{name}` resolves outside the case: {}", p.display());
            }
        }
    }
    if let Some(obj) = case.manifest.as_object() {
        for v in obj.values().filter_map(|v| v.as_str()) {
            let _ = inside_case(v);
        }
    }
});
