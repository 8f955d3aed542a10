//! Client-side validation errors.
//!
//! The `validate()` methods of [`WorkerPoolSpec`](crate::WorkerPoolSpec) and
//! [`JobSpec`](crate::JobSpec) mirror the OpenAPI schema and the CEL rules of
//! the CRDs, so the operator can reject an object it cannot act on with the
//! same message the API server would have produced. Messages of errors that
//! correspond to a CEL rule contain that rule's message verbatim.

use crate::duration::DurationError;

/// A rule violated by a spec. `field` is a JSON path relative to the object,
/// e.g. `spec.functions[1].maxReplicas`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A required list was empty.
    #[error("{field}: must contain at least {min} item(s)")]
    TooFewItems {
        /// Path of the list.
        field: String,
        /// Minimum number of items.
        min: usize,
    },
    /// A list had too many items.
    #[error("{field}: must contain at most {max} items, got {len}")]
    TooManyItems {
        /// Path of the list.
        field: String,
        /// Maximum number of items.
        max: usize,
        /// Actual number of items.
        len: usize,
    },
    /// A string was longer than allowed.
    #[error("{field}: must be at most {max} characters, got {len}")]
    TooLong {
        /// Path of the string.
        field: String,
        /// Maximum length.
        max: usize,
        /// Actual length.
        len: usize,
    },
    /// A string was empty although it must not be.
    #[error("{field}: must not be empty")]
    Empty {
        /// Path of the string.
        field: String,
    },
    /// A number was outside its allowed range.
    #[error("{field}: must be {}, got {value}", range_text(*.min, *.max))]
    OutOfRange {
        /// Path of the number.
        field: String,
        /// The offending value.
        value: i64,
        /// Inclusive lower bound, if any.
        min: Option<i64>,
        /// Inclusive upper bound, if any.
        max: Option<i64>,
    },
    /// A string did not match the pattern of its kind.
    #[error("{field}: invalid {kind} {value:?}: {hint}")]
    InvalidFormat {
        /// Path of the string.
        field: String,
        /// What the string should be, e.g. "function name".
        kind: &'static str,
        /// The offending value.
        value: String,
        /// Human readable description of the accepted format.
        hint: &'static str,
    },
    /// A duration string could not be parsed.
    #[error("{field}: {source}")]
    InvalidDuration {
        /// Path of the duration.
        field: String,
        /// The parse error.
        source: DurationError,
    },
    /// A duration that must be positive was zero.
    #[error("{field}: must be greater than zero")]
    ZeroDuration {
        /// Path of the duration.
        field: String,
    },
    /// A rule that corresponds to one of the CRD's CEL validation rules failed.
    /// `message` is the CEL rule's message.
    #[error("{field}: {message}")]
    Rule {
        /// Path of the object the rule is attached to.
        field: String,
        /// The rule's message (identical to the CEL rule's message).
        message: &'static str,
    },
}

fn range_text(min: Option<i64>, max: Option<i64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (Some(lo), None) => format!("at least {lo}"),
        (None, Some(hi)) => format!("at most {hi}"),
        (None, None) => "a valid number".to_owned(),
    }
}

impl ValidationError {
    /// The JSON path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            Self::TooFewItems { field, .. }
            | Self::TooManyItems { field, .. }
            | Self::TooLong { field, .. }
            | Self::Empty { field }
            | Self::OutOfRange { field, .. }
            | Self::InvalidFormat { field, .. }
            | Self::InvalidDuration { field, .. }
            | Self::ZeroDuration { field }
            | Self::Rule { field, .. } => field,
        }
    }
}

/// Collects every violation found while walking a spec.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    pub errors: Vec<ValidationError>,
}

impl Collector {
    pub fn push(&mut self, e: ValidationError) {
        self.errors.push(e);
    }

    pub fn rule(&mut self, ok: bool, field: impl Into<String>, message: &'static str) {
        if !ok {
            self.push(ValidationError::Rule { field: field.into(), message });
        }
    }

    pub fn range(&mut self, field: impl Into<String>, value: i64, min: Option<i64>, max: Option<i64>) {
        let below = min.is_some_and(|m| value < m);
        let above = max.is_some_and(|m| value > m);
        if below || above {
            self.push(ValidationError::OutOfRange { field: field.into(), value, min, max });
        }
    }

    pub fn max_len(&mut self, field: impl Into<String>, s: &str, max: usize) -> bool {
        // The API server counts characters (code points), not bytes.
        let len = s.chars().count();
        if len > max {
            self.push(ValidationError::TooLong { field: field.into(), max, len });
            return false;
        }
        true
    }

    pub fn format(&mut self, ok: bool, field: impl Into<String>, kind: &'static str, value: &str, hint: &'static str) {
        if !ok {
            self.push(ValidationError::InvalidFormat { field: field.into(), kind, value: value.to_owned(), hint });
        }
    }

    pub fn items(&mut self, field: &str, len: usize, min: usize, max: usize) {
        if len < min {
            self.push(ValidationError::TooFewItems { field: field.to_owned(), min });
        } else if len > max {
            self.push(ValidationError::TooManyItems { field: field.to_owned(), max, len });
        }
    }

    /// Parse a duration; records an error and returns `None` when invalid.
    pub fn duration(
        &mut self,
        field: impl Into<String>,
        d: &crate::DurationString,
        positive: bool,
    ) -> Option<std::time::Duration> {
        let field = field.into();
        match d.to_duration() {
            Ok(v) if positive && v.is_zero() => {
                self.push(ValidationError::ZeroDuration { field });
                None
            }
            Ok(v) => Some(v),
            Err(source) => {
                self.push(ValidationError::InvalidDuration { field, source });
                None
            }
        }
    }

    pub fn function_name(&mut self, field: impl Into<String>, name: &str) {
        self.format(
            crate::names::is_valid_function_name(name),
            field,
            "function name",
            name,
            "must be 1-63 characters of [A-Za-z0-9._-], starting and ending with a letter or digit",
        );
    }

    pub fn finish(self) -> Result<(), ValidationError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
