//! SUBMIT_JOB_SCHED: the next time (UTC) that matches the packet's minute, hour, day of month,
//! month and day of week fields. Each field is empty or `*` (any value) or a number.

/// A schedule field that is not empty, `*` or a number in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule field {name}: {value:?} (expected empty, '*' or {min}..={max})")]
pub struct ScheduleError {
    pub name: &'static str,
    pub value: String,
    pub min: u32,
    pub max: u32,
}

const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6)];

/// Parses the five fields; `None` means "any".
pub fn parse_fields(fields: &[&[u8]]) -> Result<[Option<u32>; 5], ScheduleError> {
    let mut out = [None; 5];
    for (i, &(name, min, max)) in FIELDS.iter().enumerate() {
        let raw = fields.get(i).copied().unwrap_or(b"");
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() || text == "*" {
            continue;
        }
        let err = || ScheduleError { name, value: text.to_string(), min, max };
        let v: u32 = text.parse().map_err(|_| err())?;
        if v < min || v > max {
            return Err(err());
        }
        out[i] = Some(v);
    }
    Ok(out)
}

/// The first whole minute strictly after `now` (unix seconds) matching the fields. When no time
/// in the next four years matches (e.g. 31 February), the job is due now rather than never.
pub fn next_match(fields: &[&[u8]], now: u64) -> Result<u64, ScheduleError> {
    let [minute, hour, dom, month, dow] = parse_fields(fields)?;
    let start_day = now / 86_400;
    let now_minute_of_day = (now % 86_400) / 60;
    for day in start_day..start_day + 4 * 366 {
        let (_, m, d) = civil_from_days(day as i64);
        let weekday = ((day + 4) % 7) as u32; // 1970-01-01 was a Thursday (4).
        if month.is_some_and(|v| v != m) || dom.is_some_and(|v| v != d) || dow.is_some_and(|v| v != weekday) {
            continue;
        }
        for h in 0..24u32 {
            if hour.is_some_and(|v| v != h) {
                continue;
            }
            for mi in 0..60u32 {
                if minute.is_some_and(|v| v != mi) {
                    continue;
                }
                let minute_of_day = u64::from(h * 60 + mi);
                if day == start_day && minute_of_day <= now_minute_of_day {
                    continue;
                }
                return Ok(day * 86_400 + minute_of_day * 60);
            }
        }
    }
    Ok(now)
}

/// (year, month 1..=12, day 1..=31) for a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26T02:30:00Z, a Thursday.
    const NOW: u64 = 1_795_660_200;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(NOW as i64 / 86_400), (2026, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn all_wildcards_mean_the_next_minute() {
        assert_eq!(next_match(&[b"", b"", b"", b"", b""], NOW), Ok(NOW + 60));
        assert_eq!(next_match(&[b"*", b"*", b"*", b"*", b"*"], NOW + 59), Ok(NOW + 60));
    }

    #[test]
    fn fixed_time_later_today_and_tomorrow() {
        // 03:15 today.
        assert_eq!(next_match(&[b"15", b"3", b"", b"", b""], NOW), Ok(NOW + 45 * 60));
        // 01:00 is past: tomorrow.
        assert_eq!(next_match(&[b"0", b"1", b"", b"", b""], NOW), Ok(NOW - 90 * 60 + 86_400));
    }

    #[test]
    fn day_of_week_and_month() {
        // Next Monday (1) at 00:00: Thursday + 4 days.
        let today = NOW - NOW % 86_400;
        assert_eq!(next_match(&[b"0", b"0", b"", b"", b"1"], NOW), Ok(today + 4 * 86_400));
        // 1 January 00:00 next year.
        let t = next_match(&[b"0", b"0", b"1", b"1", b""], NOW).unwrap();
        assert_eq!(civil_from_days((t / 86_400) as i64), (2027, 1, 1));
    }

    #[test]
    fn invalid_fields_are_errors() {
        assert!(next_match(&[b"60", b"", b"", b"", b""], NOW).is_err());
        assert!(next_match(&[b"", b"", b"0", b"", b""], NOW).is_err());
        assert!(next_match(&[b"x", b"", b"", b"", b""], NOW).is_err());
    }

    #[test]
    fn impossible_dates_are_due_now() {
        assert_eq!(next_match(&[b"0", b"0", b"31", b"2", b""], NOW), Ok(NOW));
    }
}
