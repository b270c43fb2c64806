//! Wall-clock helpers. Stored times are milliseconds since the Unix epoch.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One reading of both clocks, shared by a batch of frames. In a flood of
/// small messages, reading the clocks for every message took 5 % of the
/// server's CPU. [`BatchClock::tick`] takes a fresh reading every
/// [`BatchClock::REFRESH`] frames, and the control loop takes a new one
/// after any frame that had to wait, for example on slow event subscribers.
#[derive(Debug, Clone, Copy)]
pub struct BatchClock {
    /// Monotonic time of the reading.
    pub instant: std::time::Instant,
    /// Wall-clock time of the reading, in epoch milliseconds.
    pub ms: i64,
    uses: u32,
}

impl BatchClock {
    /// Frames that share one reading.
    pub const REFRESH: u32 = 64;

    /// Reads both clocks now.
    pub fn now() -> Self {
        BatchClock {
            instant: std::time::Instant::now(),
            ms: now_ms(),
            uses: 0,
        }
    }

    /// Counts one frame, reading the clocks again when the current reading
    /// has served [`Self::REFRESH`] frames.
    pub fn tick(&mut self) {
        self.uses += 1;
        if self.uses >= Self::REFRESH {
            *self = Self::now();
        }
    }
}

/// Formats epoch milliseconds as an RFC 3339 UTC string with milliseconds.
pub fn to_rfc3339(ms: i64) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let time = time.replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// The latest time a job may be scheduled at: 9999-12-31T23:59:59.999Z,
/// the end of the range RFC 3339 can write.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// Parses a time given as RFC 3339 (`2026-12-04T10:00:00Z`) or as a delay
/// from now (`+10m`, `+30s`), returning epoch milliseconds.
///
/// # Errors
///
/// Returns a message with the text and both accepted forms.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let trimmed = text.trim();
    if let Some(delay) = trimmed.strip_prefix('+') {
        let duration = crate::config::parse_duration(delay).map_err(|e| format!("{e}; a relative time looks like \"+10m\""))?;
        let at = i64::try_from(duration.as_millis()).ok().and_then(|ms| now_ms.checked_add(ms)).filter(|at| *at <= LATEST_MS);
        return at.ok_or_else(|| format!("the delay {text:?} ends after the year 9999, the latest time burro stores and shows"));
    }
    OffsetDateTime::parse(trimmed, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("invalid time {text:?}: expected RFC 3339 such as \"2026-12-04T10:00:00Z\" or a delay such as \"+10m\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_clock_reads_again_after_its_refresh_count() {
        let mut clock = BatchClock::now();
        let first = clock.instant;
        std::thread::sleep(std::time::Duration::from_millis(2));
        for _ in 1..BatchClock::REFRESH {
            clock.tick();
        }
        assert_eq!(clock.instant, first, "a reading serves REFRESH frames");
        clock.tick();
        assert!(clock.instant > first, "the next frame gets a new reading");
        assert!(clock.ms >= now_ms() - 1000);
    }

    #[test]
    fn formats_and_parses() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z", 0).unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("+10m", 1000).unwrap(), 601_000);
        assert!(parse_time("tomorrow", 0).unwrap_err().contains("RFC 3339"));
        assert!(parse_time("+10", 0).unwrap_err().contains("missing unit"));
        assert_eq!(to_rfc3339(LATEST_MS), "9999-12-31T23:59:59.999Z");
        let far = parse_time("+9000000d", 1_700_000_000_000).unwrap_err();
        assert!(far.contains("after the year 9999"), "{far}");
    }
}
