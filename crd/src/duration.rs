//! Duration strings such as `500ms`, `30s`, `5m`, `1h30m` or `7d`.
//!
//! The accepted grammar is exactly [`DURATION_PATTERN`]: one or more
//! `<digits><unit>` groups with no separators, where the unit is one of
//! `ms`, `s`, `m`, `h` or `d`. The same pattern is embedded in the CRD schema,
//! so anything the API server accepts also parses with [`parse_duration`].

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Regular expression (RE2 / ECMA-262 compatible) that every duration string must match.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";

/// Maximum length of a duration string, in bytes.
pub const DURATION_MAX_LEN: usize = 32;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("duration must not be empty")]
    Empty,
    /// The string was longer than [`DURATION_MAX_LEN`].
    #[error("duration {0:?} is longer than 32 characters")]
    TooLong(String),
    /// The string did not match [`DURATION_PATTERN`].
    #[error(
        "invalid duration {0:?}: expected one or more <number><unit> groups with unit ms, s, m, h or d (e.g. \"500ms\", \"30s\", \"1h30m\")"
    )]
    Invalid(String),
    /// The value does not fit in a [`std::time::Duration`].
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parse a duration string in the format accepted by the gearfleet CRDs.
///
/// ```
/// use std::time::Duration;
/// use gearfleet_crd::parse_duration;
///
/// assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(parse_duration("1.5h").is_err());
/// assert!(parse_duration("5 min").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.len() > DURATION_MAX_LEN {
        return Err(DurationError::TooLong(s.to_owned()));
    }
    let invalid = || DurationError::Invalid(s.to_owned());
    let overflow = || DurationError::Overflow(s.to_owned());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(invalid());
        }
        let value: u64 = s[start..i].parse().map_err(|_| overflow())?;
        let (unit_ms, unit_len): (u64, usize) = match &bytes[i..] {
            [b'm', b's', ..] => (1, 2),
            [b's', ..] => (1_000, 1),
            [b'm', ..] => (60_000, 1),
            [b'h', ..] => (3_600_000, 1),
            [b'd', ..] => (86_400_000, 1),
            _ => return Err(invalid()),
        };
        i += unit_len;
        let millis = value.checked_mul(unit_ms).ok_or_else(overflow)?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Render a [`Duration`] in the canonical gearfleet duration format
/// (largest units first, e.g. `1h30m`, `1m500ms`, `0s`). Sub-millisecond
/// precision is dropped.
pub fn format_duration(d: Duration) -> String {
    let mut millis = d.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, unit_ms) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = millis / unit_ms;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            millis -= n * unit_ms;
        }
    }
    out
}

/// A duration written as a string, e.g. `"30s"`, `"5m"` or `"1h30m"`.
///
/// Serialises as a plain JSON string. Deserialisation does not validate (so a
/// stored object can always be read); call [`DurationString::to_duration`] or
/// the spec `validate()` methods to check the value. The CRD schema restricts
/// the value to [`DURATION_PATTERN`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationString(pub String);

impl DurationString {
    /// Wrap a string without validating it.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The canonical string for a [`Duration`] (see [`format_duration`]).
    pub fn from_duration(d: Duration) -> Self {
        Self(format_duration(d))
    }

    /// The raw string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse into a [`Duration`].
    pub fn to_duration(&self) -> Result<Duration, DurationError> {
        parse_duration(&self.0)
    }
}

impl Deref for DurationString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DurationString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for DurationString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<Duration> for DurationString {
    fn from(d: Duration) -> Self {
        Self::from_duration(d)
    }
}

impl FromStr for DurationString {
    type Err = DurationError;
    /// Parses and validates.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<&DurationString> for Duration {
    type Error = DurationError;
    fn try_from(d: &DurationString) -> Result<Self, Self::Error> {
        d.to_duration()
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1m1s1ms").unwrap(), Duration::from_millis(61_001));
        // Repeated units simply add up, as the pattern allows them.
        assert_eq!(parse_duration("1s1s").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in
            ["", "5", "s", "1.5h", "5 min", "5min", " 5s", "5s ", "-5s", "5S", "1h 30m", "1us", "1w", "ms", "5sm"]
        {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(parse_duration("99999999999999999999s"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse_duration(&"1s".repeat(17)), Err(DurationError::TooLong(_))));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0s", "1ms", "1s", "1m30s", "1h30m", "2d3h4m5s6ms"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(DurationString::from(Duration::from_secs(60)).as_str(), "1m");
    }

    #[test]
    fn from_str_validates() {
        assert!("5m".parse::<DurationString>().is_ok());
        assert!("5 m".parse::<DurationString>().is_err());
    }
}
