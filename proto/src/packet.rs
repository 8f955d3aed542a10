//! Binary packets: magic, type, and NUL-separated arguments.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of a binary packet header: magic (4), type (4), body length (4).
pub const HEADER_LEN: usize = 12;

/// Most arguments any packet type carries (SUBMIT_JOB_SCHED).
pub const MAX_ARGS: usize = 8;

/// Direction of a binary packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Magic {
    /// `\0REQ`: sent by clients and workers.
    Req,
    /// `\0RES`: sent by the server.
    Res,
}

impl Magic {
    pub const REQ_BYTES: [u8; 4] = *b"\0REQ";
    pub const RES_BYTES: [u8; 4] = *b"\0RES";

    pub fn bytes(self) -> [u8; 4] {
        match self {
            Magic::Req => Self::REQ_BYTES,
            Magic::Res => Self::RES_BYTES,
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<Magic> {
        match b {
            b"\0REQ" => Some(Magic::Req),
            b"\0RES" => Some(Magic::Res),
            _ => None,
        }
    }
}

macro_rules! packet_types {
    ($( $variant:ident = $num:literal, $name:literal, $fixed:literal, $data:literal; )*) => {
        /// Every binary packet type of the Gearman protocol.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum PacketType {
            $( $variant = $num, )*
        }

        impl PacketType {
            /// All packet types, in numeric order.
            pub const ALL: &'static [PacketType] = &[$( PacketType::$variant, )*];

            /// The packet type with this number, if the protocol defines one.
            pub fn from_u32(n: u32) -> Option<PacketType> {
                match n {
                    $( $num => Some(PacketType::$variant), )*
                    _ => None,
                }
            }

            /// The protocol's name for this type, e.g. `SUBMIT_JOB_BG`.
            pub fn name(self) -> &'static str {
                match self {
                    $( PacketType::$variant => $name, )*
                }
            }

            /// Argument layout: the number of NUL-terminated leading arguments, and whether an
            /// opaque trailing data argument (which may itself contain NUL bytes) follows them.
            pub fn layout(self) -> (usize, bool) {
                match self {
                    $( PacketType::$variant => ($fixed, $data), )*
                }
            }
        }
    };
}

packet_types! {
    CanDo = 1, "CAN_DO", 1, false;
    CantDo = 2, "CANT_DO", 1, false;
    ResetAbilities = 3, "RESET_ABILITIES", 0, false;
    PreSleep = 4, "PRE_SLEEP", 0, false;
    Noop = 6, "NOOP", 0, false;
    SubmitJob = 7, "SUBMIT_JOB", 2, true;
    JobCreated = 8, "JOB_CREATED", 1, false;
    GrabJob = 9, "GRAB_JOB", 0, false;
    NoJob = 10, "NO_JOB", 0, false;
    JobAssign = 11, "JOB_ASSIGN", 2, true;
    WorkStatus = 12, "WORK_STATUS", 3, false;
    WorkComplete = 13, "WORK_COMPLETE", 1, true;
    WorkFail = 14, "WORK_FAIL", 1, false;
    GetStatus = 15, "GET_STATUS", 1, false;
    EchoReq = 16, "ECHO_REQ", 0, true;
    EchoRes = 17, "ECHO_RES", 0, true;
    SubmitJobBg = 18, "SUBMIT_JOB_BG", 2, true;
    Error = 19, "ERROR", 2, false;
    StatusRes = 20, "STATUS_RES", 5, false;
    SubmitJobHigh = 21, "SUBMIT_JOB_HIGH", 2, true;
    SetClientId = 22, "SET_CLIENT_ID", 1, false;
    CanDoTimeout = 23, "CAN_DO_TIMEOUT", 2, false;
    AllYours = 24, "ALL_YOURS", 0, false;
    WorkException = 25, "WORK_EXCEPTION", 1, true;
    OptionReq = 26, "OPTION_REQ", 1, false;
    OptionRes = 27, "OPTION_RES", 1, false;
    WorkData = 28, "WORK_DATA", 1, true;
    WorkWarning = 29, "WORK_WARNING", 1, true;
    GrabJobUniq = 30, "GRAB_JOB_UNIQ", 0, false;
    JobAssignUniq = 31, "JOB_ASSIGN_UNIQ", 3, true;
    SubmitJobHighBg = 32, "SUBMIT_JOB_HIGH_BG", 2, true;
    SubmitJobLow = 33, "SUBMIT_JOB_LOW", 2, true;
    SubmitJobLowBg = 34, "SUBMIT_JOB_LOW_BG", 2, true;
    SubmitJobSched = 35, "SUBMIT_JOB_SCHED", 7, true;
    SubmitJobEpoch = 36, "SUBMIT_JOB_EPOCH", 3, true;
    SubmitReduceJob = 37, "SUBMIT_REDUCE_JOB", 4, true;
    SubmitReduceJobBackground = 38, "SUBMIT_REDUCE_JOB_BACKGROUND", 4, true;
    GrabJobAll = 39, "GRAB_JOB_ALL", 0, false;
    JobAssignAll = 40, "JOB_ASSIGN_ALL", 4, true;
    GetStatusUnique = 41, "GET_STATUS_UNIQUE", 1, false;
    StatusResUnique = 42, "STATUS_RES_UNIQUE", 6, false;
}

impl PacketType {
    /// Total number of arguments a well-formed packet of this type carries.
    pub fn arg_count(self) -> usize {
        let (fixed, data) = self.layout();
        fixed + usize::from(data)
    }
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A binary packet. The body is kept as one shared buffer and arguments are views into it,
/// so decoding allocates nothing per argument.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub magic: Magic,
    pub ptype: PacketType,
    body: Bytes,
    /// Argument `i` is `body[starts[i]..ends[i]]`.
    starts: [u32; MAX_ARGS],
    ends: [u32; MAX_ARGS],
    nargs: u8,
}

/// Why a packet body does not match its type's argument layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgCountMismatch {
    pub expected: usize,
    pub found: usize,
}

impl Packet {
    /// Splits `body` into the arguments `ptype` defines. Leading arguments end at a NUL; the
    /// last argument takes the rest of the body (for data arguments, NUL bytes included).
    pub fn from_body(magic: Magic, ptype: PacketType, body: Bytes) -> Result<Packet, ArgCountMismatch> {
        let expected = ptype.arg_count();
        let mut starts = [0u32; MAX_ARGS];
        let mut ends = [0u32; MAX_ARGS];
        if expected == 0 {
            if !body.is_empty() {
                return Err(ArgCountMismatch { expected: 0, found: 1 });
            }
            return Ok(Packet { magic, ptype, body, starts, ends, nargs: 0 });
        }
        let mut pos = 0usize;
        for i in 0..expected - 1 {
            match memchr_nul(&body[pos..]) {
                Some(off) => {
                    starts[i] = pos as u32;
                    ends[i] = (pos + off) as u32;
                    pos += off + 1;
                }
                None => return Err(ArgCountMismatch { expected, found: i + 1 }),
            }
        }
        starts[expected - 1] = pos as u32;
        ends[expected - 1] = body.len() as u32;
        Ok(Packet { magic, ptype, body, starts, ends, nargs: expected as u8 })
    }

    /// Builds a packet from its arguments, joining them with NUL separators.
    ///
    /// # Panics
    /// If `args.len()` differs from the type's argument count: building a malformed packet is a
    /// programming error, never a result of input.
    pub fn new(magic: Magic, ptype: PacketType, args: &[&[u8]]) -> Packet {
        assert_eq!(args.len(), ptype.arg_count(), "wrong argument count for {ptype}");
        let mut body = BytesMut::with_capacity(body_len(args));
        write_args(&mut body, args);
        Packet::from_body(magic, ptype, body.freeze()).expect("arguments joined by this function split back")
    }

    /// A request packet (client or worker to server).
    pub fn req(ptype: PacketType, args: &[&[u8]]) -> Packet {
        Packet::new(Magic::Req, ptype, args)
    }

    /// A response packet (server to client or worker).
    pub fn res(ptype: PacketType, args: &[&[u8]]) -> Packet {
        Packet::new(Magic::Res, ptype, args)
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        usize::from(self.nargs)
    }

    pub fn is_empty(&self) -> bool {
        self.nargs == 0
    }

    /// Argument `i` as a byte slice.
    ///
    /// # Panics
    /// If `i` is out of range; decoding guarantees the type's argument count.
    pub fn arg(&self, i: usize) -> &[u8] {
        assert!(i < self.len(), "{} has no argument {i}", self.ptype);
        &self.body[self.starts[i] as usize..self.ends[i] as usize]
    }

    /// Argument `i` as a shared buffer (no copy).
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        assert!(i < self.len(), "{} has no argument {i}", self.ptype);
        self.body.slice(self.starts[i] as usize..self.ends[i] as usize)
    }

    /// The packet body exactly as on the wire.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Appends the wire form of this packet to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_as(dst, self.magic);
    }

    /// Appends this packet's type and body under another magic: how a server forwards a worker's
    /// WORK_* request to clients as a response, without re-splitting the body.
    pub fn encode_as(&self, dst: &mut BytesMut, magic: Magic) {
        dst.reserve(HEADER_LEN + self.body.len());
        dst.put_slice(&magic.bytes());
        dst.put_u32(self.ptype as u32);
        dst.put_u32(self.body.len() as u32);
        dst.put_slice(&self.body);
    }

    /// The wire form of this packet.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode(&mut b);
        b.freeze()
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_struct("Packet");
        list.field("magic", &self.magic).field("type", &self.ptype);
        let args: Vec<_> = (0..self.len())
            .map(|i| {
                let a = self.arg(i);
                if a.len() > 64 {
                    format!("{:?}…({} bytes)", String::from_utf8_lossy(&a[..64]), a.len())
                } else {
                    format!("{:?}", String::from_utf8_lossy(a))
                }
            })
            .collect();
        list.field("args", &args).finish()
    }
}

fn body_len(args: &[&[u8]]) -> usize {
    args.iter().map(|a| a.len()).sum::<usize>() + args.len().saturating_sub(1)
}

fn write_args(dst: &mut BytesMut, args: &[&[u8]]) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            dst.put_u8(0);
        }
        dst.put_slice(a);
    }
}

/// Appends a packet straight from its arguments, without building a [`Packet`] first: the
/// broker's hot path for JOB_ASSIGN, WORK_* forwarding and JOB_CREATED.
pub fn encode_packet(dst: &mut BytesMut, magic: Magic, ptype: PacketType, args: &[&[u8]]) {
    debug_assert_eq!(args.len(), ptype.arg_count(), "wrong argument count for {ptype}");
    let len = body_len(args);
    dst.reserve(HEADER_LEN + len);
    dst.put_slice(&magic.bytes());
    dst.put_u32(ptype as u32);
    dst.put_u32(len as u32);
    write_args(dst, args);
}

fn memchr_nul(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_number() {
        for &t in PacketType::ALL {
            assert_eq!(PacketType::from_u32(t as u32), Some(t));
        }
        assert_eq!(PacketType::ALL.len(), 41, "1..=42 without the unused 5");
        assert_eq!(PacketType::from_u32(5), None);
        assert_eq!(PacketType::from_u32(0), None);
        assert_eq!(PacketType::from_u32(43), None);
        assert_eq!(PacketType::from_u32(0x8000_0000), None);
    }

    #[test]
    fn layouts_match_the_protocol() {
        assert_eq!(PacketType::SubmitJob.arg_count(), 3);
        assert_eq!(PacketType::JobAssignUniq.arg_count(), 4);
        assert_eq!(PacketType::SubmitJobSched.arg_count(), 8);
        assert_eq!(PacketType::SubmitJobEpoch.arg_count(), 4);
        assert_eq!(PacketType::SubmitReduceJob.arg_count(), 5);
        assert_eq!(PacketType::JobAssignAll.arg_count(), 5);
        assert_eq!(PacketType::StatusRes.arg_count(), 5);
        assert_eq!(PacketType::StatusResUnique.arg_count(), 6);
        assert_eq!(PacketType::EchoReq.arg_count(), 1);
        assert_eq!(PacketType::Noop.arg_count(), 0);
        assert!(PacketType::ALL.iter().all(|t| t.arg_count() <= MAX_ARGS));
    }

    #[test]
    fn data_argument_keeps_nul_bytes() {
        let p = Packet::req(PacketType::SubmitJob, &[b"fn", b"u", b"a\0b\0"]);
        assert_eq!(p.arg(0), b"fn");
        assert_eq!(p.arg(1), b"u");
        assert_eq!(p.arg(2), b"a\0b\0");
        assert_eq!(p.body().as_ref(), b"fn\0u\0a\0b\0");
    }

    #[test]
    fn missing_separators_are_an_argument_count_error() {
        let err = Packet::from_body(Magic::Req, PacketType::SubmitJob, Bytes::from_static(b"fn")).unwrap_err();
        assert_eq!(err, ArgCountMismatch { expected: 3, found: 1 });
        let err = Packet::from_body(Magic::Req, PacketType::GrabJob, Bytes::from_static(b"x")).unwrap_err();
        assert_eq!(err.expected, 0);
    }

    #[test]
    fn empty_arguments_are_allowed() {
        let p = Packet::from_body(Magic::Req, PacketType::SubmitJobBg, Bytes::from_static(b"f\0\0")).unwrap();
        assert_eq!(p.arg(0), b"f");
        assert_eq!(p.arg(1), b"");
        assert_eq!(p.arg(2), b"");
        let p = Packet::from_body(Magic::Req, PacketType::EchoReq, Bytes::new()).unwrap();
        assert_eq!(p.arg(0), b"");
    }

    #[test]
    fn encode_packet_matches_packet_encode() {
        let p = Packet::res(PacketType::JobAssignUniq, &[b"H:x:1", b"f", b"u", b"data"]);
        let mut a = BytesMut::new();
        p.encode(&mut a);
        let mut b = BytesMut::new();
        encode_packet(&mut b, Magic::Res, PacketType::JobAssignUniq, &[b"H:x:1", b"f", b"u", b"data"]);
        assert_eq!(a, b);
        assert_eq!(&a[..4], b"\0RES");
        assert_eq!(&a[4..8], &31u32.to_be_bytes());
        assert_eq!(&a[8..12], &(a.len() as u32 - 12).to_be_bytes());
    }
}
