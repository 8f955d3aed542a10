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
}
