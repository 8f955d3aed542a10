//! The Gearman wire protocol, shared by the broker, the worker SDK, the benchmark and the tests.
//!
//! * [`packet`]: the 42 binary packet types, their argument layout, and [`Packet`] itself.
//! * [`codec`]: framing over a byte buffer in two steps (check, then parse and advance), for both
//!   the binary protocol and the line-based text admin protocol that share one port.
//! * [`admin`]: the text admin commands and parsers for their replies.

pub mod admin;
pub mod codec;
pub mod packet;

pub use codec::{Codec, Frame, ProtoError};
pub use packet::{Magic, Packet, PacketType};

/// The port Gearman servers listen on by default.
pub const DEFAULT_PORT: u16 = 4730;
