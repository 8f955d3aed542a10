//! Durability for background jobs and retaining clients' foreground jobs: the on-disk record format and the journal.

mod journal;
mod record;
mod replay;

pub use journal::{Durability, Journal, Recovered, Recovery};
pub use record::{JobRecord, OutcomeKind, OutcomeRecord, Record, RecordError};
