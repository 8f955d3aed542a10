//! The Gearman wire protocol, shared by the broker, the worker SDK, the benchmark and the tests.
//!
//! * [`packet`]: the 42 binary packet types, their argument layout, and [`Packet`] itself.
//! * [`codec`]: framing over a byte buffer in two steps (check, then parse and advance), for both
//!   the binary protocol and the line-based text admin protocol that share one port.
//! * [`admin`]: the text admin commands and parsers for their replies.
//! * [`priority`]: job priority and which `SUBMIT_JOB*` packet carries which.
//! * [`options`]: `OPTION_REQ` names and gearfleet's protocol extension strings.

pub mod admin;
pub mod codec;
#[cfg(feature = "logging")]
pub mod logging;
pub mod options;
pub mod packet;
pub mod priority;

pub use codec::{Codec, Frame, ProtoError};
pub use packet::{Magic, Packet, PacketType};
pub use priority::{Priority, Submission};

/// The port Gearman servers listen on by default.
pub const DEFAULT_PORT: u16 = 4730;
