//! A minimal raw-protocol client, for what drivers cannot send: garbage,
//! hand-built pipelines, FunctionCall, protocol 3.2 startup.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend message: tag and body.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The message type byte.
    pub tag: u8,
    /// The body after the length word.
    pub body: Bytes,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut b = &self.body[..];
        while !b.is_empty() && b[0] != 0 {
            let end = b.iter().position(|&c| c == 0)?;
            if b[0] == code {
                return Some(String::from_utf8_lossy(&b[1..end]).into_owned());
            }
            b = &b[end + 1..];
        }
        None
    }
}

/// A raw connection.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Opens a TCP connection without any startup.
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(RawConn {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// Connects and logs in as `user` (trust auth) with protocol `3.minor`
    /// and extra startup parameters; returns the messages up to ReadyForQuery.
    pub async fn login(
        port: u16,
        user: &str,
        minor: u16,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(Self, Vec<Msg>)> {
        let mut conn = Self::connect(port).await?;
        let mut body = BytesMut::new();
        body.put_u16(3);
        body.put_u16(minor);
        for (k, v) in [("user", user), ("database", "postgres")]
            .iter()
            .chain(extra.iter())
        {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut packet = BytesMut::new();
        packet.put_u32(body.len() as u32 + 4);
        packet.put_slice(&body);
        conn.send_raw(&packet).await?;
        let msgs = conn.until_ready().await?;
        Ok((conn, msgs))
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends one message.
    pub async fn send(&mut self, tag: u8, body: &[u8]) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        put_msg(&mut out, tag, body);
        self.send_raw(&out).await
    }

    /// Reads one message (10 s limit); `None` at EOF.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Msg>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf.get_u8();
                    self.buf.advance(4);
                    let body = self.buf.split_to(len - 4).freeze();
                    return Ok(Some(Msg { tag, body }));
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                    .await
                    .context("timed out waiting for the proxy")??;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads messages through the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> anyhow::Result<Vec<Msg>> {
        let mut msgs = Vec::new();
        loop {
            match self.recv().await? {
                Some(m) => {
                    let done = m.tag == b'Z';
                    msgs.push(m);
                    if done {
                        return Ok(msgs);
                    }
                }
                None => bail!("connection closed after {:?}", tags(&msgs)),
            }
        }
    }
}

/// Appends one message to `out`.
pub fn put_msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

/// Concatenates NUL-terminated strings.
pub fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

/// The message tags as a string, e.g. "12CZ".
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// A `Parse` body: statement `name`, text `sql`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstrs(&[name, sql]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// A `Bind` body of the unnamed portal to statement `stmt` with text
/// parameters `params`.
pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = cstrs(&["", stmt]);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

/// An `Execute` body of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut b = cstrs(&[""]);
    b.extend_from_slice(&0i32.to_be_bytes());
    b
}

/// A `Close` or `Describe` body: `kind` `S` (statement) or `P` (portal).
pub fn target(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&cstrs(&[name]));
    b
}
