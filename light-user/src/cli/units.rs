//! Parsers for human-friendly command-line values (sizes, shares, rates).

use crate::coding::CacheBudget;

/// Splits `1.5GiB` into `(1.5, "GiB")`.
fn number_and_unit(t: &str) -> Option<(f64, &str)> {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit))
}

/// Parses a byte size: `4096`, `64KiB`, `2GiB`, `1.5G` (powers of 1024 for `KiB`…, of
/// 1000 for `K`/`KB`…).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) =
        number_and_unit(s.trim()).ok_or(format!("`{s}` is not a size (e.g. 512MiB, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        u => return Err(format!("unknown size unit `{u}` in `{s}`")),
    };
    Ok((n * mult).round() as u64)
}

/// Parses a cache budget: `25%` of the library, a size (`2GiB`), or `0` for none.
pub fn parse_budget(s: &str) -> Result<CacheBudget, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("cache share {p}% is outside 0–100%"));
        }
        return Ok(CacheBudget::Fraction(p / 100.0));
    }
    parse_size(t).map(CacheBudget::Bytes)
}

/// A send rate in bytes per second; `None` is unpaced (`max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

/// Parses a send rate in bits per second (`max`, `800M`, `10G`, `2.5Gbit`).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "max" || t == "unlimited" {
        return Ok(Rate(None));
    }
    let t = t
        .trim_end_matches("bit/s")
        .trim_end_matches("bps")
        .trim_end_matches("bit");
    let (n, unit) =
        number_and_unit(t).ok_or(format!("`{s}` is not a rate (e.g. 800M, 10G, max)"))?;
    let mult = match unit.trim() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        u => return Err(format!("unknown rate unit `{u}` in `{s}`")),
    };
    let bytes = (n * mult / 8.0).round() as u64;
    if bytes == 0 {
        return Err(format!("rate `{s}` is zero"));
    }
    Ok(Rate(Some(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1500));
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn budgets() {
        assert_eq!(parse_budget("25%"), Ok(CacheBudget::Fraction(0.25)));
        assert_eq!(parse_budget("0"), Ok(CacheBudget::Bytes(0)));
        assert_eq!(parse_budget("1MiB"), Ok(CacheBudget::Bytes(1 << 20)));
        assert!(parse_budget("150%").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("max"), Ok(Rate(None)));
        assert_eq!(parse_rate("8M"), Ok(Rate(Some(1_000_000))));
        assert_eq!(parse_rate("10Gbit"), Ok(Rate(Some(1_250_000_000))));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
