//! A socket that may or may not be wrapped in TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A client- or server-side connection, plain or TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// A Unix-domain socket to a server on this host (never TLS).
    Unix(UnixStream),
    /// TLS terminated by us (client side).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS initiated by us (upstream side).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, MaybeTls::Plain(_) | MaybeTls::Unix(_))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Server($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            MaybeTls::Client($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Unix(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// One direction of a connection, for the relay. A plain socket splits
/// into borrowed halves that need no lock; TLS, whose two directions share
/// one session, goes through tokio's locking split.
pub(crate) enum ReadSide<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Unix(tokio::net::unix::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut MaybeTls>),
}

/// The other direction (see [`ReadSide`]).
pub(crate) enum WriteSide<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Unix(tokio::net::unix::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut MaybeTls>),
}

impl MaybeTls {
    /// Both directions, to be driven at once.
    pub(crate) fn halves(&mut self) -> (ReadSide<'_>, WriteSide<'_>) {
        match self {
            MaybeTls::Plain(s) => {
                let (r, w) = s.split();
                (ReadSide::Tcp(r), WriteSide::Tcp(w))
            }
            MaybeTls::Unix(s) => {
                let (r, w) = s.split();
                (ReadSide::Unix(r), WriteSide::Unix(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }
}

macro_rules! side {
    ($self:ident, $Side:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            $Side::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            $Side::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            $Side::Tls($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for ReadSide<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        side!(self, ReadSide, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteSide<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        side!(self, WriteSide, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        side!(self, WriteSide, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        side!(self, WriteSide, s => s.poll_shutdown(cx))
    }
}
