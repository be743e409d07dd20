//! The memory bound on work sized by a config value, a flag or a file header
//! (docs/security.md, "Memory"). Every size computed from such a value is checked here, with
//! the memory it would need, *before* anything is allocated, so that an absurd value is an
//! error naming it instead of an allocation failure (which aborts the process).
//!
//! The rule: one planned allocation (or the planned peak of one step) may not exceed the
//! **memory limit**: `BEIT_SEG_MAX_MEMORY` (bytes, or with a `K`/`M`/`G`/`T` suffix, powers of
//! 1024) when set, else the machine's physical memory.

/// The memory limit in bytes (see the module doc).
pub fn memory_limit() -> u64 {
    if let Some(v) = std::env::var_os("BEIT_SEG_MAX_MEMORY") {
        if let Some(b) = parse_bytes(&v.to_string_lossy()) {
            return b;
        }
    }
    physical_memory().unwrap_or(16 << 30)
}

/// Where [`memory_limit`] comes from, in words.
pub fn memory_limit_source() -> &'static str {
    match std::env::var_os("BEIT_SEG_MAX_MEMORY") {
        Some(v) if parse_bytes(&v.to_string_lossy()).is_some() => "BEIT_SEG_MAX_MEMORY",
        _ => "this machine's physical memory; set BEIT_SEG_MAX_MEMORY to change it",
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mul as f64) as u64)
}

fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return Some((pages as u64).saturating_mul(size as u64));
        }
    }
    None
}

/// Bytes in words (`1.5 GiB`).
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b:.0} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Checks that `bytes` (computed in `f64`, so that no product overflows) fit the memory limit;
/// the error says what needs them, how much, and the limit. `what` is e.g. "`--img-size
/// 1000000`: the relative position tables".
pub fn check_memory(what: &str, bytes: f64) -> Result<(), String> {
    let limit = memory_limit();
    if !bytes.is_finite() || bytes > limit as f64 {
        return Err(format!(
            "{what} would need {} of memory, more than the limit of {} ({})",
            human_bytes(bytes),
            human_bytes(limit as f64),
            memory_limit_source()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert!(check_memory("x", 1e30).unwrap_err().contains("would need"));
        assert!(check_memory("x", f64::NAN).is_err());
        assert_eq!(human_bytes(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
    }
}
