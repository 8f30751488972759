//! Byte sizes: parsing `"80GiB"`, `"40GB"`, `"0.10GiB"` and printing GiB.

use crate::{Error, Result};

/// One gibibyte (2³⁰ bytes).
pub const GIB: u64 = 1 << 30;
/// One mebibyte (2²⁰ bytes).
pub const MIB: u64 = 1 << 20;

/// Parses a byte size: a number followed by a unit `B`, `KB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB`, `TB`/`TiB` (case-insensitive; `K`, `M`, `G`, `T` alone are binary), or a
/// plain number of bytes. `what` names the value in errors.
///
/// # Errors
/// [`Error::InvalidInput`] naming `what` and the bad text.
pub fn parse_bytes(what: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::invalid(what, format!("{text:?} is not a size (expected e.g. 80GiB, 40GB, 512MiB)")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => MIB as f64,
        "mb" => 1e6,
        "g" | "gib" => GIB as f64,
        "gb" => 1e9,
        "t" | "tib" => (GIB as f64) * 1024.0,
        "tb" => 1e12,
        other => {
            return Err(Error::invalid(
                what,
                format!("{text:?} has an unknown unit {other:?} (expected B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)"),
            ));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(Error::invalid(what, format!("{text:?} is out of range")));
    }
    Ok(bytes.round() as u64)
}

/// Bytes as GiB with two decimals: `"14.96 GiB"`.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

/// Bytes as GiB with two decimals from 1 GiB up, else as MiB with one: `"14.96 GiB"`,
/// `"37.5 MiB"`.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB { gib(bytes) } else { format!("{:.1} MiB", bytes as f64 / MIB as f64) }
}

/// Signed bytes as GiB with two decimals (for shortfalls).
pub fn gib_signed(bytes: i128) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_bytes("x", "80GiB").unwrap(), 80 * GIB);
        assert_eq!(parse_bytes("x", "40GB").unwrap(), 40_000_000_000);
        assert_eq!(parse_bytes("x", "0.5 gib").unwrap(), GIB / 2);
        assert_eq!(parse_bytes("x", "512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_bytes("x", "1234").unwrap(), 1234);
        assert_eq!(parse_bytes("x", "2T").unwrap(), 2048 * GIB);
        let e = parse_bytes("gpu memory", "80XB").unwrap_err().to_string();
        assert!(e.contains("gpu memory") && e.contains("80XB"), "{e}");
        assert!(parse_bytes("x", "GiB").is_err());
        assert_eq!(gib(15 * GIB / 2), "7.50 GiB");
        assert_eq!((human(3 * GIB), human(3 * MIB / 2)), ("3.00 GiB".to_owned(), "1.5 MiB".to_owned()));
    }
}
