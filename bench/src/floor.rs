//! The floor: a server that does no work of its own for a background submission or for handing a
//! worker a job, to show what the exchange itself costs on this machine.
//!
//! It keeps nothing: every `SUBMIT_JOB*` gets a `JOB_CREATED` with a made-up handle and is
//! forgotten; every `GRAB_JOB*` gets a made-up job at once (an endless queue), whose result is
//! ignored. One thread per connection with blocking reads and writes (two system calls per job, no
//! readiness polling), so its thread sleeps between packets. What it spends is the system calls
//! plus the wake-ups of a sleeping thread: a server that avoids some of those wake-ups (the broker
//! polls briefly before its event loop sleeps) can spend less, so the floor is a reference point,
//! not a bound. (Foreground jobs need a real queue between connections: their floor is
//! [`crate::router_floor`].)

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use gearfleet_proto::{Codec, Frame, Packet, PacketType};

/// Serves on `addr` until the process is killed.
pub fn serve(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = connection(stream);
        });
    }
    Ok(())
}

fn connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let codec = Codec::server();
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    let mut out = bytes::BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut next: u64 = 0;
    let mut function = bytes::Bytes::from_static(b"floor");
    const DATA: &[u8] = b"floor-08";
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(Frame::Packet(p))) if is_submit(p.ptype) => {
                    next += 1;
                    let handle = format!("H:floor:{next}");
                    Packet::res(PacketType::JobCreated, &[handle.as_bytes()]).encode(&mut out);
                }
                Ok(Some(Frame::Packet(p))) if p.ptype == PacketType::CanDo => function = p.arg_bytes(0),
                Ok(Some(Frame::Packet(p))) => {
                    let mut handle = || {
                        next += 1;
                        format!("H:floor:{next}")
                    };
                    match p.ptype {
                        PacketType::GrabJob => {
                            Packet::res(PacketType::JobAssign, &[handle().as_bytes(), &function, DATA]).encode(&mut out)
                        }
                        PacketType::GrabJobUniq => {
                            Packet::res(PacketType::JobAssignUniq, &[handle().as_bytes(), &function, b"", DATA])
                                .encode(&mut out)
                        }
                        PacketType::GrabJobAll => {
                            Packet::res(PacketType::JobAssignAll, &[handle().as_bytes(), &function, b"", b"", DATA])
                                .encode(&mut out)
                        }
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}

/// Whether `kind` submits a job (foreground or background, any priority).
pub(crate) fn is_submit(kind: PacketType) -> bool {
    matches!(
        kind,
        PacketType::SubmitJob
            | PacketType::SubmitJobBg
            | PacketType::SubmitJobHigh
            | PacketType::SubmitJobHighBg
            | PacketType::SubmitJobLow
            | PacketType::SubmitJobLowBg
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `requests` to a fresh floor connection and reads back `n` packets.
    fn exchange(requests: &[Packet], n: usize) -> Vec<Packet> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = connection(s);
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let mut req = bytes::BytesMut::new();
        for p in requests {
            p.encode(&mut req);
        }
        c.write_all(&req).unwrap();
        let codec = Codec::client();
        let mut buf = bytes::BytesMut::new();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while got.len() < n {
            let read = c.read(&mut chunk).unwrap();
            assert!(read > 0, "floor server closed early");
            buf.extend_from_slice(&chunk[..read]);
            while let Some(Frame::Packet(p)) = codec.decode_frame(&mut buf).unwrap() {
                got.push(p);
            }
        }
        got
    }

    #[test]
    fn answers_every_background_submission_in_order() {
        let submit = Packet::req(PacketType::SubmitJobBg, &[b"f", b"", b"data"]);
        let got = exchange(&[submit.clone(), submit.clone(), submit], 3);
        assert!(got.iter().all(|p| p.ptype == PacketType::JobCreated));
        let handles: Vec<&[u8]> = got.iter().map(|p| p.arg(0)).collect();
        assert_eq!(handles, [&b"H:floor:1"[..], b"H:floor:2", b"H:floor:3"]);
    }

    #[test]
    fn every_grab_gets_a_job_of_the_registered_function() {
        let got = exchange(
            &[
                Packet::req(PacketType::CanDo, &[b"reverse"]),
                Packet::req(PacketType::GrabJobUniq, &[]),
                Packet::req(PacketType::WorkComplete, &[b"H:floor:1", b"result"]),
                Packet::req(PacketType::GrabJob, &[]),
            ],
            2,
        );
        assert_eq!(got[0].ptype, PacketType::JobAssignUniq);
        assert_eq!(got[0].arg(1), b"reverse");
        assert_eq!(got[1].ptype, PacketType::JobAssign);
        assert_eq!(got[1].arg(1), b"reverse");
        assert_ne!(got[0].arg(0), got[1].arg(0), "each job has its own handle");
    }
}
