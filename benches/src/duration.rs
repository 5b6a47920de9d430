//! Durations on the command line: `500ms`, `5s`, `1.5s`, `2m`, `1h`, or a
//! bare number of seconds.

use std::time::Duration;

/// Parses a duration such as `500ms`, `5s`, `2m` or `10` (seconds).
///
/// # Errors
/// If the text is not a non-negative finite number with one of the units
/// `ms`, `s`, `m`, `h` (or none).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 5s, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}: must be >= 0"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// `d` as text for reports: `500ms`, `5s`, `1.5s`.
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert!(parse("-1s").is_err());
        assert!(parse("fast").is_err());
        assert_eq!(show(Duration::from_millis(250)), "250ms");
        assert_eq!(show(Duration::from_secs(5)), "5s");
    }
}
