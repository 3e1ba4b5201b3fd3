//! Settings as `SHOW` prints them: sizes (`16MB`, `512kB`, `1GB`) and durations (`5min`, `30s`,
//! `250ms`). Parsing only; which setting means what is the caller's business.

use std::time::Duration;

/// The leading digits of `text` (trimmed) and the unit after them.
fn split(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(end);
    Some((num.parse().ok()?, unit))
}

/// Bytes of a size setting; a bare number counts in `bare_unit` bytes (the setting's own unit:
/// MB for `wal_keep_size`, bytes for `wal_segment_size`). Negative values (`-1`, "no limit"),
/// unknown units and overflows are `None`.
pub fn size(text: &str, bare_unit: u64) -> Option<u64> {
    let (n, unit) = split(text)?;
    let factor: u64 = match unit {
        "" => bare_unit,
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A time setting; a bare number counts in seconds.
pub fn duration(text: &str) -> Option<Duration> {
    let (n, unit) = split(text)?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "min" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn sizes() {
        assert_eq!(size("16MB", 1), Some(16 * MB));
        assert_eq!(size("1GB", MB), Some(1024 * MB));
        assert_eq!(size("512kB", MB), Some(512 * 1024));
        assert_eq!(size("0", MB), Some(0));
        assert_eq!(size("64", MB), Some(64 * MB));
        assert_eq!(size(" 8B ", MB), Some(8));
        assert_eq!(size("-1", MB), None);
        assert_eq!(size("12parsecs", MB), None);
        assert_eq!(size("99999999999TB", MB), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(duration("x"), None);
    }
}
