//! Feeds arbitrary bytes to the results-file reader ([`beit_seg::eval::results::read_results`],
//! what `eval` reads to resume and `merge` reads for each shard) and, when they read as a
//! results file, to `merge` itself ([`beit_seg::eval::merge_with`], one shard) and to
//! [`beit_seg::eval::results::sum_records`]. The reader takes a path (it checks that the file is
//! regular and bounds its length before reading), so each input is written to a file under
//! `/dev/shm` (a RAM disk: `merge`'s synced output costs nothing there). Every outcome but a
//! panic, an abort, a hang or an out-of-memory abort is fine: malformed input must come back as
//! an `EvalError`. The memory limit (`BEIT_SEG_MAX_MEMORY`) is set to 1 GiB, below libFuzzer's
//! `-rss_limit_mb=2048`, so that what the library plans within its limit fits the fuzzer's.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::set_var("BEIT_SEG_MAX_MEMORY", "1G");
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = base.join(format!("beit-seg-fuzz-results-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let file = dir().join("results.jsonl");
    let out = dir().join("metrics.json");
    std::fs::write(&file, data).expect("write the input");
    if let Ok((header, records, _torn)) = beit_seg::eval::results::read_results(&file) {
        // What `merge` and a resumed `eval` do with what was read.
        let _ = beit_seg::eval::results::sum_records(&records, header.num_classes);
        let _ = beit_seg::eval::results::skipped_and_evaluated(&records);
        let _ = beit_seg::eval::merge_with(std::slice::from_ref(&file), &out, None, true);
    }
});
