//! Durability for background jobs: the on-disk record format and the journal.

mod journal;
mod record;

pub use journal::{Durability, Journal, Recovered};
pub use record::{JobRecord, Record, RecordError};
