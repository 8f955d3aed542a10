//! Minimal blocking Gearman client calls for the e2e tests (the broker is reached over TCP from the
//! host, through a Service's ClusterIP).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gearfleet_proto::admin::{FunctionStats, WorkerStats};
use gearfleet_proto::{Packet, PacketType};

/// Sends one admin line and returns the reply up to the closing `.` (None if the broker is not
/// reachable or closes the connection).
pub fn admin(addr: &str, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("{command}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(".\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Some(reply)
}

/// Sends one admin line whose reply is a single line (`OK …`, `ERR …`) and returns that line.
pub fn admin_line(addr: &str, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("{command}\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        if stream.read(&mut byte).ok()? == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&reply).trim_end().to_string())
}

/// Reads one binary response packet: (type, body).
fn read_packet(stream: &mut TcpStream) -> std::io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; 12];
    stream.read_exact(&mut header)?;
    let ptype = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let size = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body)?;
    Ok((ptype, body))
}

/// Submits `count` background jobs (unique keys `<prefix>-<i>`) and waits for every JOB_CREATED.
pub fn submit_background(addr: &str, function: &str, prefix: &str, payload: &str, count: usize) {
    let mut stream = TcpStream::connect(addr).expect("connect to the broker");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for i in 0..count {
        let unique = format!("{prefix}-{i}");
        let packet =
            Packet::req(PacketType::SubmitJobBg, &[function.as_bytes(), unique.as_bytes(), payload.as_bytes()]);
        stream.write_all(&packet.to_bytes()).expect("submit");
    }
    for _ in 0..count {
        let (ptype, _) = read_packet(&mut stream).expect("JOB_CREATED");
        assert_eq!(ptype, PacketType::JobCreated as u32, "expected JOB_CREATED");
    }
}

/// Submits one foreground job and returns its WORK_COMPLETE payload, or an error naming what came
/// back instead (WORK_FAIL, a connection error, or no answer within `timeout`).
pub fn call(addr: &str, function: &str, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let packet = Packet::req(PacketType::SubmitJob, &[function.as_bytes(), b"", payload]);
    stream.write_all(&packet.to_bytes()).map_err(|e| e.to_string())?;
    loop {
        let (ptype, body) = read_packet(&mut stream).map_err(|e| format!("waiting for {function}: {e}"))?;
        match ptype {
            t if t == PacketType::WorkComplete as u32 => {
                let at = body.iter().position(|&b| b == 0).ok_or("WORK_COMPLETE without a handle")?;
                return Ok(body[at + 1..].to_vec());
            }
            t if t == PacketType::WorkFail as u32 => return Err(format!("{function} failed")),
            t if t == PacketType::Error as u32 => return Err(format!("ERROR {}", String::from_utf8_lossy(&body))),
            _ => {} // JOB_CREATED, WORK_STATUS, WORK_DATA, ...
        }
    }
}

/// Every worker connection `fleet workers` lists (None if the broker is not reachable).
pub fn fleet_workers(addr: &str) -> Option<Vec<WorkerStats>> {
    Some(admin(addr, "fleet workers")?.lines().filter_map(WorkerStats::parse).collect())
}

/// (queued, running) of `function` from `fleet status`.
pub fn backlog(addr: &str, function: &str) -> Option<(u64, u64)> {
    let reply = admin(addr, "fleet status")?;
    let stats = reply.lines().filter_map(FunctionStats::parse).find(|s| s.function == function)?;
    Some((stats.queued_total(), stats.running))
}
