//! Durations written as strings such as `"500ms"`, `"30s"`, `"5m"`.

use serde::{Deserializer, Serializer};
use std::time::Duration;

/// Parses `500ms`, `30s`, `5m`, `2h` or `1d`.
///
/// # Errors
///
/// Returns a message naming the text and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number and a unit, such as \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\""))?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        "" => return Err(format!("invalid duration {text:?}: missing unit; write for example \"{number}s\" or \"{number}ms\"")),
        other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}; use ms, s, m, h or d")),
    };
    let millis = value * millis_per_unit;
    if !millis.is_finite() || millis > 1e15 {
        return Err(format!("invalid duration {text:?}: too large"));
    }
    Ok(Duration::from_millis(millis.round() as u64))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Accepts a duration string and explains the form when given a number.
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration string such as \"30s\" or \"500ms\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<Duration, E> {
        Err(E::custom(format!("invalid duration {number}: write it as a string with a unit, such as \"{number}s\" or \"{number}ms\"")))
    }

    fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<Duration, E> {
        self.visit_i64(number as i64)
    }

    fn visit_f64<E: serde::de::Error>(self, number: f64) -> Result<Duration, E> {
        Err(E::custom(format!("invalid duration {number}: write it as a string with a unit, such as \"{number}s\"")))
    }
}

/// Serde support for `Duration` fields written as strings.
pub mod serde_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*duration))
    }
}

/// Serde support for `Option<Duration>` fields written as strings.
pub mod serde_duration_option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        // TOML has no null, so a present key always has a value.
        deserializer.deserialize_any(DurationVisitor).map(Some)
    }

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => serializer.serialize_str(&format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
    }

    #[test]
    fn rejects_bad_text() {
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("expected a number"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["500ms", "30s", "5m", "2h", "1d", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
