//! A Gearman client-side connection: buffered packet reads, and writes batched until a flush so
//! one system call carries everything a batch of replies asked for.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};
use gearfleet_proto::{Codec, Frame, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_RESERVE: usize = 64 * 1024;

pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: Codec,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: BytesMut::with_capacity(16 * 1024),
            codec: Codec::client(),
        })
    }

    /// Appends a request to the write buffer; nothing is sent before [`Conn::flush`].
    pub fn queue(&mut self, ptype: PacketType, args: &[&[u8]]) {
        encode_packet(&mut self.wbuf, Magic::Req, ptype, args);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.context("writing to the server")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// A packet already in the read buffer, if a whole one is there.
    pub fn try_recv(&mut self) -> Result<Option<Packet>> {
        match self.codec.decode_frame(&mut self.rbuf)? {
            Some(Frame::Packet(p)) => Ok(Some(p)),
            Some(Frame::Admin(line)) => bail!("unexpected text from the server: {line:?}"),
            None => Ok(None),
        }
    }

    /// The next packet, reading from the socket as needed.
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.try_recv()? {
                return Ok(p);
            }
            self.rbuf.reserve(READ_RESERVE);
            let n = self.stream.read_buf(&mut self.rbuf).await.context("reading from the server")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}
