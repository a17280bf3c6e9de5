//! The sockets a relay thread serves: a plain TCP client, and a server
//! over TCP or a Unix socket. TLS sessions stay on the async relay.

use std::io::{self, Read, Write};

use mio::event::Source;

use crate::stream::MaybeTls;

/// A non-blocking socket registered with a relay thread's poll.
#[derive(Debug)]
pub(crate) enum Sock {
    /// TCP.
    Tcp(mio::net::TcpStream),
    /// A Unix-domain socket.
    Unix(mio::net::UnixStream),
}

impl Sock {
    /// The socket of a plain connection, taken off its runtime; a TLS one
    /// is given back.
    pub(crate) fn from_tokio(stream: MaybeTls) -> Result<io::Result<Sock>, MaybeTls> {
        match stream {
            MaybeTls::Plain(tcp) => Ok(tcp
                .into_std()
                .map(|s| Sock::Tcp(mio::net::TcpStream::from_std(s)))),
            MaybeTls::Unix(unix) => Ok(unix
                .into_std()
                .map(|s| Sock::Unix(mio::net::UnixStream::from_std(s)))),
            tls => Err(tls),
        }
    }

    /// The socket as a connection of the runtime this runs on.
    pub(crate) fn into_tokio(self) -> io::Result<MaybeTls> {
        Ok(match self {
            Sock::Tcp(s) => MaybeTls::Plain(tokio::net::TcpStream::from_std(s.into())?),
            Sock::Unix(s) => MaybeTls::Unix(tokio::net::UnixStream::from_std(s.into())?),
        })
    }

    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
        }
    }

    pub(super) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write(buf),
            Sock::Unix(s) => (&*s).write(buf),
        }
    }

    pub(super) fn source(&mut self) -> &mut dyn Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
        }
    }
}
