//! Dates for the report and the server descriptions, without a date crate (the calendar
//! arithmetic is the broker's, which its SUBMIT_JOB_SCHED support needs anyway).

use gearfleet_broker::schedule::civil_from_days;

/// A UTC timestamp, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn formats_utc_date_and_minute() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        // 2024-02-29T13:07:59Z
        assert_eq!(utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_709_212_079)), "2024-02-29 13:07 UTC");
    }
}
