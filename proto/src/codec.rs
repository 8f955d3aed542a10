//! Framing: binary packets and text admin lines on one byte stream.
//!
//! Decoding is done in two steps, as in mini-redis: [`Codec::check`] looks at the buffered bytes
//! and says whether a whole frame is there (allocating nothing, rejecting bad headers as soon as
//! the header is in), then [`Codec::decode_frame`] parses it and advances the buffer.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::{HEADER_LEN, Magic, Packet, PacketType};

/// Default upper bound for a packet body (64 MiB).
pub const DEFAULT_MAX_PACKET: usize = 64 * 1024 * 1024;
/// Default upper bound for a text admin line.
pub const DEFAULT_MAX_LINE: usize = 8 * 1024;

/// One unit read from a Gearman connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A binary packet.
    Packet(Packet),
    /// A text admin command line, without its line ending.
    Admin(Bytes),
}

/// Input that breaks the protocol. Each variant maps to a Gearman ERROR code.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {0:02x?}: expected \\0REQ or \\0RES")]
    BadMagic([u8; 4]),
    #[error("unexpected magic: {0:?} packets are not accepted on this side of the connection")]
    WrongDirection(Magic),
    #[error("unknown packet type {0}")]
    UnknownType(u32),
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("{ptype} takes {expected} arguments, got {found}")]
    ArgCount { ptype: PacketType, expected: usize, found: usize },
    #[error("admin line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtoError {
    /// The code carried in the first argument of the ERROR packet sent back for this error.
    pub fn error_code(&self) -> &'static str {
        match self {
            ProtoError::BadMagic(_) | ProtoError::WrongDirection(_) => "ERR_BAD_MAGIC",
            ProtoError::UnknownType(_) => "ERR_UNKNOWN_COMMAND",
            ProtoError::TooLarge { .. } => "ERR_PACKET_TOO_LARGE",
            ProtoError::ArgCount { .. } => "ERR_INVALID_ARGUMENTS",
            ProtoError::LineTooLong(_) => "ERR_LINE_TOO_LONG",
            ProtoError::Io(_) => "ERR_IO",
        }
    }

    /// The ERROR packet that answers this error.
    pub fn to_error_packet(&self) -> Packet {
        let text = self.to_string();
        Packet::res(PacketType::Error, &[self.error_code().as_bytes(), text.as_bytes()])
    }
}

/// What [`Codec::check`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// More bytes are needed; `at_least` is the total buffer length that may complete the frame.
    Incomplete { at_least: usize },
    /// A whole binary packet of `len` bytes (header included).
    Packet { len: usize },
    /// A whole admin line: `len` bytes including the `\n`.
    Line { len: usize },
}

/// Frames Gearman traffic for one side of a connection.
#[derive(Debug, Clone)]
pub struct Codec {
    /// The magic accepted from the peer: servers accept `Req`, clients and workers `Res`.
    pub accept: Magic,
    /// Upper bound for a packet body.
    pub max_packet: usize,
    /// Upper bound for an admin line.
    pub max_line: usize,
    /// Whether text admin lines are accepted (servers only).
    pub admin: bool,
}

impl Codec {
    /// The server side: accepts requests and admin lines.
    pub fn server() -> Codec {
        Codec { accept: Magic::Req, max_packet: DEFAULT_MAX_PACKET, max_line: DEFAULT_MAX_LINE, admin: true }
    }

    /// The client/worker side: accepts responses only.
    pub fn client() -> Codec {
        Codec { accept: Magic::Res, max_packet: DEFAULT_MAX_PACKET, max_line: DEFAULT_MAX_LINE, admin: false }
    }

    pub fn with_max_packet(mut self, max: usize) -> Codec {
        self.max_packet = max;
        self
    }

    /// Says whether a whole frame is buffered, without allocating. Errors as soon as the header
    /// shows the frame cannot be valid, so an oversized length is refused before its body arrives.
    pub fn check(&self, buf: &[u8]) -> Result<Check, ProtoError> {
        let Some(&first) = buf.first() else {
            return Ok(Check::Incomplete { at_least: 1 });
        };
        if first != 0 {
            if !self.admin {
                let mut m = [0u8; 4];
                let n = buf.len().min(4);
                m[..n].copy_from_slice(&buf[..n]);
                return Err(ProtoError::BadMagic(m));
            }
            return match buf.iter().position(|&b| b == b'\n') {
                Some(pos) if pos <= self.max_line => Ok(Check::Line { len: pos + 1 }),
                Some(_) => Err(ProtoError::LineTooLong(self.max_line)),
                None if buf.len() > self.max_line => Err(ProtoError::LineTooLong(self.max_line)),
                None => Ok(Check::Incomplete { at_least: buf.len() + 1 }),
            };
        }
        // Reject a bad magic as soon as its bytes disagree, not only once 12 bytes are in.
        let n = buf.len().min(4);
        if !(Magic::REQ_BYTES[..n] == buf[..n] || Magic::RES_BYTES[..n] == buf[..n]) {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(ProtoError::BadMagic(m));
        }
        if buf.len() < HEADER_LEN {
            return Ok(Check::Incomplete { at_least: HEADER_LEN });
        }
        let magic = Magic::from_bytes(&buf[..4]).ok_or(ProtoError::BadMagic([buf[0], buf[1], buf[2], buf[3]]))?;
        if magic != self.accept {
            return Err(ProtoError::WrongDirection(magic));
        }
        let ptype_raw = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if PacketType::from_u32(ptype_raw).is_none() {
            return Err(ProtoError::UnknownType(ptype_raw));
        }
        let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if len > self.max_packet {
            return Err(ProtoError::TooLarge { len, max: self.max_packet });
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            return Ok(Check::Incomplete { at_least: total });
        }
        Ok(Check::Packet { len: total })
    }

    /// Parses the frame at the front of `buf` and advances past it. `Ok(None)` means more bytes
    /// are needed. The packet body is split off the buffer without copying.
    pub fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        match self.check(buf)? {
            Check::Incomplete { .. } => Ok(None),
            Check::Line { len } => {
                let mut line = buf.split_to(len).freeze();
                line.truncate(len - 1);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                Ok(Some(Frame::Admin(line)))
            }
            Check::Packet { len } => {
                let magic = self.accept;
                let ptype = PacketType::from_u32(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]))
                    .ok_or(ProtoError::UnknownType(0))?;
                buf.advance(HEADER_LEN);
                let body = buf.split_to(len - HEADER_LEN).freeze();
                let packet = Packet::from_body(magic, ptype, body).map_err(|e| ProtoError::ArgCount {
                    ptype,
                    expected: e.expected,
                    found: e.found,
                })?;
                Ok(Some(Frame::Packet(packet)))
            }
        }
    }
}

impl tokio_util::codec::Decoder for Codec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        let frame = self.decode_frame(src)?;
        if frame.is_none()
            && let Ok(Check::Incomplete { at_least }) = self.check(src)
        {
            src.reserve(at_least.saturating_sub(src.len()));
        }
        Ok(frame)
    }
}

impl tokio_util::codec::Encoder<Packet> for Codec {
    type Error = ProtoError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        item.encode(dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<&Packet> for Codec {
    type Error = ProtoError;

    fn encode(&mut self, item: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(magic: &[u8; 4], ptype: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(magic);
        b.extend_from_slice(&ptype.to_be_bytes());
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn decodes_a_packet_split_across_reads() {
        let codec = Codec::server();
        let full = wire(b"\0REQ", 7, b"reverse\0\0hello");
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            assert!(codec.decode_frame(&mut buf).unwrap().is_none(), "complete too early at {i}");
            buf.extend_from_slice(&[*byte]);
        }
        let Some(Frame::Packet(p)) = codec.decode_frame(&mut buf).unwrap() else { panic!("no packet") };
        assert_eq!(p.ptype, PacketType::SubmitJob);
        assert_eq!(p.arg(0), b"reverse");
        assert_eq!(p.arg(2), b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_back_to_back_packets_and_admin_lines() {
        let codec = Codec::server();
        let mut buf = wire(b"\0REQ", 16, b"ping");
        buf.extend_from_slice(b"status\r\n");
        buf.extend_from_slice(&wire(b"\0REQ", 4, b""));
        let f1 = codec.decode_frame(&mut buf).unwrap().unwrap();
        let f2 = codec.decode_frame(&mut buf).unwrap().unwrap();
        let f3 = codec.decode_frame(&mut buf).unwrap().unwrap();
        assert!(matches!(f1, Frame::Packet(ref p) if p.ptype == PacketType::EchoReq && p.arg(0) == b"ping"));
        assert_eq!(f2, Frame::Admin(Bytes::from_static(b"status")));
        assert!(matches!(f3, Frame::Packet(ref p) if p.ptype == PacketType::PreSleep));
        assert!(codec.decode_frame(&mut buf).unwrap().is_none());
    }

    #[test]
    fn rejects_bad_magic_early() {
        let codec = Codec::server();
        let mut buf = BytesMut::from(&b"\0XY"[..]);
        assert!(matches!(codec.decode_frame(&mut buf), Err(ProtoError::BadMagic(_))));
        // A response magic sent to a server.
        let mut buf = wire(b"\0RES", 6, b"");
        assert!(matches!(codec.decode_frame(&mut buf), Err(ProtoError::WrongDirection(Magic::Res))));
    }

    #[test]
    fn rejects_unknown_and_huge_types() {
        let codec = Codec::server();
        for t in [0u32, 5, 43, 0x8000_0000, u32::MAX] {
            let mut buf = wire(b"\0REQ", t, b"");
            assert!(matches!(codec.decode_frame(&mut buf), Err(ProtoError::UnknownType(x)) if x == t));
        }
    }

    #[test]
    fn rejects_oversized_length_before_the_body_arrives() {
        let codec = Codec::server().with_max_packet(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\0REQ");
        buf.extend_from_slice(&7u32.to_be_bytes());
        buf.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
        assert!(matches!(codec.decode_frame(&mut buf), Err(ProtoError::TooLarge { .. })));
    }

    #[test]
    fn rejects_wrong_argument_count() {
        let codec = Codec::server();
        let mut buf = wire(b"\0REQ", 7, b"only-function");
        let err = codec.decode_frame(&mut buf).unwrap_err();
        assert!(matches!(err, ProtoError::ArgCount { ptype: PacketType::SubmitJob, expected: 3, found: 1 }));
        let p = err.to_error_packet();
        assert_eq!(p.ptype, PacketType::Error);
        assert_eq!(p.arg(0), b"ERR_INVALID_ARGUMENTS");
    }

    #[test]
    fn rejects_endless_admin_lines() {
        let codec = Codec::server();
        let mut buf = BytesMut::from(&vec![b'a'; DEFAULT_MAX_LINE + 1][..]);
        assert!(matches!(codec.decode_frame(&mut buf), Err(ProtoError::LineTooLong(_))));
    }

    #[test]
    fn clients_do_not_accept_text() {
        let codec = Codec::client();
        let mut buf = BytesMut::from(&b"OK\n"[..]);
        assert!(codec.decode_frame(&mut buf).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, decoding never panics, and it always either makes progress, asks
        /// for more bytes, or fails; it never loops on the same bytes.
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = Codec::server().with_max_packet(256);
            let mut buf = BytesMut::from(&data[..]);
            loop {
                let before = buf.len();
                match codec.decode_frame(&mut buf) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Any well-formed packet survives encode → decode unchanged.
        #[test]
        fn packets_round_trip(type_index in 0usize..41, args in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..32), 8)) {
            let ptype = PacketType::ALL[type_index];
            let n = ptype.arg_count();
            let refs: Vec<&[u8]> = args.iter().take(n).map(|a| a.as_slice()).collect();
            let packet = Packet::req(ptype, &refs);
            let mut buf = BytesMut::new();
            packet.encode(&mut buf);
            let decoded = Codec::server().decode_frame(&mut buf).unwrap().unwrap();
            prop_assert_eq!(decoded, Frame::Packet(packet));
        }
    }
}
