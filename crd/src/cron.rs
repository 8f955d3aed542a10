//! Syntax check for standard 5-field cron schedules.
//!
//! CEL has no cron parser, so the CRD schema restricts schedules with the
//! regular expression [`CRON_PATTERN`]; [`is_valid_cron`] accepts exactly the
//! same language (a test checks both against the same table of examples).
//!
//! Accepted: `MIN HOUR DOM MONTH DOW` separated by one or more spaces, where
//! each field is a comma-separated list of `*`, `N` or `N-M`, each optionally
//! followed by `/STEP` (1–99). Ranges: minute 0–59, hour 0–23, day of month
//! 1–31, month 1–12 or `JAN`–`DEC`, day of week 0–7 (0 and 7 are Sunday) or
//! `SUN`–`SAT`; names are all upper or all lower case. The macros `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly` are
//! accepted too.

macro_rules! cron_step {
    () => {
        "(/[1-9][0-9]?)?"
    };
}
macro_rules! cron_field {
    ($v:expr) => {
        concat!("(\\*|", $v, "(-", $v, ")?)", cron_step!(), "(,(\\*|", $v, "(-", $v, ")?)", cron_step!(), ")*")
    };
}
macro_rules! cron_minute {
    () => {
        "([0-5]?[0-9])"
    };
}
macro_rules! cron_hour {
    () => {
        "([01]?[0-9]|2[0-3])"
    };
}
macro_rules! cron_dom {
    () => {
        "(0?[1-9]|[12][0-9]|3[01])"
    };
}
macro_rules! cron_month {
    () => {
        "(0?[1-9]|1[0-2]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
    };
}
macro_rules! cron_dow {
    () => {
        "([0-7]|SUN|MON|TUE|WED|THU|FRI|SAT|sun|mon|tue|wed|thu|fri|sat)"
    };
}

/// Regular expression (RE2 / ECMA-262 compatible) for a 5-field cron schedule.
pub const CRON_PATTERN: &str = concat!(
    "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|",
    cron_field!(cron_minute!()),
    " +",
    cron_field!(cron_hour!()),
    " +",
    cron_field!(cron_dom!()),
    " +",
    cron_field!(cron_month!()),
    " +",
    cron_field!(cron_dow!()),
    ")$"
);

/// Maximum length of a cron schedule string.
pub const CRON_MAX_LEN: usize = 128;

/// Pattern for an IANA time zone name such as `UTC`, `Europe/Berlin` or `Etc/GMT+5`.
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$";

/// Maximum length of a time zone name.
pub const TIME_ZONE_MAX_LEN: usize = 64;

const MACROS: [&str; 7] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

#[derive(Clone, Copy)]
enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn value_ok(self, v: &str) -> bool {
        let numeric = |max_digits: usize, min: u32, max: u32| {
            !v.is_empty()
                && v.len() <= max_digits
                && v.bytes().all(|c| c.is_ascii_digit())
                && v.parse::<u32>().is_ok_and(|n| (min..=max).contains(&n))
        };
        let named = |names: &[&str]| names.iter().any(|n| *n == v || n.to_ascii_lowercase() == v);
        match self {
            Field::Minute => numeric(2, 0, 59),
            Field::Hour => numeric(2, 0, 23),
            Field::DayOfMonth => numeric(2, 1, 31),
            Field::Month => numeric(2, 1, 12) || named(&MONTHS),
            Field::DayOfWeek => numeric(1, 0, 7) || named(&DAYS),
        }
    }

    fn element_ok(self, e: &str) -> bool {
        let (base, step) = match e.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (e, None),
        };
        if let Some(step) = step {
            let b = step.as_bytes();
            let step_ok = (1..=2).contains(&b.len()) && b.iter().all(|c| c.is_ascii_digit()) && b[0] != b'0';
            if !step_ok {
                return false;
            }
        }
        if base == "*" {
            return true;
        }
        match base.split_once('-') {
            Some((lo, hi)) => self.value_ok(lo) && self.value_ok(hi),
            None => self.value_ok(base),
        }
    }

    fn ok(self, field: &str) -> bool {
        field.split(',').all(|e| self.element_ok(e))
    }
}

/// Whether `schedule` is a valid cron schedule (see the module docs and [`CRON_PATTERN`]).
pub fn is_valid_cron(schedule: &str) -> bool {
    if schedule.len() > CRON_MAX_LEN {
        return false;
    }
    if MACROS.contains(&schedule) {
        return true;
    }
    if schedule.starts_with(' ') || schedule.ends_with(' ') {
        return false;
    }
    let fields: Vec<&str> = schedule.split(' ').filter(|f| !f.is_empty()).collect();
    let [min, hour, dom, month, dow] = fields.as_slice() else {
        return false;
    };
    Field::Minute.ok(min)
        && Field::Hour.ok(hour)
        && Field::DayOfMonth.ok(dom)
        && Field::Month.ok(month)
        && Field::DayOfWeek.ok(dow)
}

/// Whether `tz` looks like an IANA time zone name (see [`TIME_ZONE_PATTERN`]).
/// Only the syntax is checked, not that the zone exists.
pub fn is_valid_time_zone(tz: &str) -> bool {
    let b = tz.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'+' | b'-');
    !b.is_empty()
        && b.len() <= TIME_ZONE_MAX_LEN
        && b[0].is_ascii_alphabetic()
        && tz.split('/').all(|part| !part.is_empty() && part.as_bytes().iter().all(ok_char))
}

/// Cron schedules used by the unit and schema tests: `(schedule, valid)`.
#[doc(hidden)]
pub const CRON_EXAMPLES: &[(&str, bool)] = &[
    ("* * * * *", true),
    ("0 3 * * *", true),
    ("*/15 * * * *", true),
    ("0 0 1 1 *", true),
    ("0 0 1 JAN SUN", true),
    ("0 0 1 jan sun", true),
    ("0,30 8-18 * * MON-FRI", true),
    ("0 8-18/2 * * 1-5", true),
    ("59 23 31 12 7", true),
    ("00 00 01 01 0", true),
    ("5  4   *  *  *", true),
    ("*/5,10-20/3 * * * *", true),
    ("@daily", true),
    ("@hourly", true),
    ("@weekly", true),
    ("", false),
    ("* * * *", false),
    ("* * * * * *", false),
    ("60 * * * *", false),
    ("* 24 * * *", false),
    ("* * 0 * *", false),
    ("* * 32 * *", false),
    ("* * * 13 *", false),
    ("* * * 0 *", false),
    ("* * * * 8", false),
    ("* * * * 07", false),
    ("*/0 * * * *", false),
    ("*/100 * * * *", false),
    ("*/05 * * * *", false),
    ("1-2-3 * * * *", false),
    (",1 * * * *", false),
    ("1, * * * *", false),
    (" * * * * *", false),
    ("* * * * * ", false),
    ("*\t* * * *", false),
    ("@every 5m", false),
    ("@reboot", false),
    ("@Daily", false),
    ("* * * Jan *", false),
    ("? * * * *", false),
    ("L * * * *", false),
    ("100 * * * *", false),
];

/// A parsed cron schedule: which minutes, hours, days, months and weekdays match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// The day-of-month field is `*` (then only the weekday restricts the day, and vice versa).
    dom_any: bool,
    dow_any: bool,
}

impl CronSchedule {
    /// Parses a schedule that [`is_valid_cron`] accepts; `None` otherwise.
    pub fn parse(schedule: &str) -> Option<CronSchedule> {
        if !is_valid_cron(schedule) {
            return None;
        }
        let expanded = match schedule {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s => s,
        };
        let f: Vec<&str> = expanded.split(' ').filter(|f| !f.is_empty()).collect();
        let dow = bits(f[4], Field::DayOfWeek, 0, 7)?;
        Some(CronSchedule {
            minutes: bits(f[0], Field::Minute, 0, 59)?,
            hours: u32::try_from(bits(f[1], Field::Hour, 0, 23)?).ok()?,
            days_of_month: u32::try_from(bits(f[2], Field::DayOfMonth, 1, 31)?).ok()?,
            months: u16::try_from(bits(f[3], Field::Month, 1, 12)?).ok()?,
            // 7 is Sunday too.
            days_of_week: u8::try_from((dow | (dow >> 7)) & 0x7f).ok()?,
            dom_any: f[2].starts_with('*'),
            dow_any: f[4].starts_with('*'),
        })
    }

    /// Whether the day (1-based day of month and month, weekday 0 = Sunday) matches. As in cron,
    /// when both day fields are restricted, either may match.
    pub fn matches_day(&self, day_of_month: u32, month: u32, weekday: u32) -> bool {
        let month_ok = self.months & (1 << month) != 0;
        let dom_ok = self.days_of_month & (1 << day_of_month) != 0;
        let dow_ok = self.days_of_week & (1 << (weekday % 7)) != 0;
        let day_ok = match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (true, false) => dow_ok,
            (false, true) => dom_ok,
            (false, false) => dom_ok || dow_ok,
        };
        month_ok && day_ok
    }

    /// The latest matching (hour, minute) at or before `(hour, minute)` on a matching day.
    pub fn latest_time_until(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        (0..=hour.min(23)).rev().filter(|h| self.hours & (1 << h) != 0).find_map(|h| {
            let last_minute = if h == hour { minute.min(59) } else { 59 };
            (0..=last_minute).rev().find(|m| self.minutes & (1 << m) != 0).map(|m| (h, m))
        })
    }
}

fn value(v: &str, field: Field) -> Option<u32> {
    if let Ok(n) = v.parse::<u32>() {
        return Some(n);
    }
    let upper = v.to_ascii_uppercase();
    let names: &[&str] = match field {
        Field::Month => &MONTHS,
        Field::DayOfWeek => &DAYS,
        _ => return None,
    };
    let index = u32::try_from(names.iter().position(|n| *n == upper)?).ok()?;
    Some(if matches!(field, Field::Month) { index + 1 } else { index })
}

/// The bit set of one field (bit n = value n).
fn bits(field: &str, kind: Field, min: u32, max: u32) -> Option<u64> {
    let mut set = 0u64;
    for element in field.split(',') {
        let (base, step) = match element.split_once('/') {
            Some((b, s)) => (b, s.parse::<u32>().ok()?),
            None => (element, 1),
        };
        let (lo, hi) = if base == "*" {
            (min, max)
        } else if let Some((a, b)) = base.split_once('-') {
            (value(a, kind)?, value(b, kind)?)
        } else {
            let v = value(base, kind)?;
            // "N/STEP" means N, N+STEP, ... up to the maximum.
            (v, if element.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step.max(1);
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_examples() {
        for (s, valid) in CRON_EXAMPLES {
            assert_eq!(is_valid_cron(s), *valid, "{s:?}");
        }
    }

    #[test]
    fn pattern_shape() {
        assert!(CRON_PATTERN.starts_with("^(@(yearly|"));
        assert!(CRON_PATTERN.ends_with(")$"));
        assert_eq!(CRON_PATTERN.matches(" +").count(), 4);
    }

    #[test]
    fn time_zones() {
        for ok in ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"] {
            assert!(is_valid_time_zone(ok), "{ok}");
        }
        for bad in ["", "/UTC", "UTC/", "Europe//Berlin", "1UTC", "Europe Berlin"] {
            assert!(!is_valid_time_zone(bad), "{bad}");
        }
    }

    #[test]
    fn schedules_match_the_right_days_and_times() {
        let daily3 = CronSchedule::parse("0 3 * * *").unwrap();
        assert!(daily3.matches_day(15, 6, 2));
        assert_eq!(daily3.latest_time_until(2, 59), None);
        assert_eq!(daily3.latest_time_until(23, 59), Some((3, 0)));
        assert_eq!(daily3.latest_time_until(3, 0), Some((3, 0)));

        let weekdays = CronSchedule::parse("*/15 9-17 * * MON-FRI").unwrap();
        assert!(weekdays.matches_day(1, 1, 1) && !weekdays.matches_day(1, 1, 0) && !weekdays.matches_day(1, 1, 6));
        assert_eq!(weekdays.latest_time_until(12, 44), Some((12, 30)));
        assert_eq!(weekdays.latest_time_until(20, 0), Some((17, 45)));

        // Both day fields restricted: either matches (the 1st, or any Sunday).
        let either = CronSchedule::parse("0 0 1 * 0").unwrap();
        assert!(either.matches_day(1, 5, 3) && either.matches_day(12, 5, 0) && !either.matches_day(12, 5, 3));
        // 7 is Sunday as well; names in lower case; months by name.
        assert!(CronSchedule::parse("0 0 * * 7").unwrap().matches_day(3, 3, 0));
        let feb = CronSchedule::parse("30 6 29 feb *").unwrap();
        assert!(feb.matches_day(29, 2, 4) && !feb.matches_day(29, 3, 4));
        assert_eq!(CronSchedule::parse("@hourly").unwrap().latest_time_until(7, 10), Some((7, 0)));
        assert_eq!(CronSchedule::parse("5/20 * * * *").unwrap().latest_time_until(0, 59), Some((0, 45)));
        assert_eq!(CronSchedule::parse("not cron"), None);
    }
}
