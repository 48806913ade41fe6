//! Human durations in configuration files: `500ms`, `30s`, `5m`, `1h`, `2d`, `1h30m`.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, unit one of `ms`, `s`,
/// `m`, `h`, `d`.
///
/// # Errors
/// A message saying what was expected, for a config error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like \"5m\", \"30s\" or \"1h30m\", found {text:?}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
        if digits == 0 {
            return Err(expected());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(amount),
            "s" => Duration::from_secs(amount),
            "m" => Duration::from_secs(amount.saturating_mul(60)),
            "h" => Duration::from_secs(amount.saturating_mul(3600)),
            "d" => Duration::from_secs(amount.saturating_mul(86_400)),
            _ => return Err(expected()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `500ms`, `0s`).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, secs_ms) in [
            ("5m", 300_000),
            ("30s", 30_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("2d", 172_800_000),
            ("1m500ms", 60_500),
        ] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parsed.as_millis(), secs_ms, "{text}");
            assert_eq!(format_duration(parsed), text);
        }
        for bad in ["", "5", "m", "5 minutes", "-5m", "5M", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
