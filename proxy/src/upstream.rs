//! Connections to the upstream PostgreSQL server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::stream::MaybeTls;
use crate::tls::{server_name, UpstreamTlsMode};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Where and how to reach the upstream server.
#[derive(Clone)]
pub struct Upstream {
    /// `host:port`, or the path of a Unix socket.
    pub addr: String,
    /// The host part, for certificate verification.
    pub host: String,
    /// The TLS policy.
    pub mode: UpstreamTlsMode,
    /// rustls client configuration, `None` when `mode` is `disable`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl Upstream {
    /// Opens a connection, negotiating TLS as the mode says.
    ///
    /// `allow_tls` false forces a plain connection (used to fall back under
    /// `prefer`); returns the stream and how long connecting took.
    pub async fn connect(&self, allow_tls: bool) -> Result<(MaybeTls, Duration), String> {
        let started = Instant::now();
        let fut = self.connect_inner(allow_tls);
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(Ok(stream)) => Ok((stream, started.elapsed())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "timed out after {:?} connecting to {}",
                self.connect_timeout, self.addr
            )),
        }
    }

    async fn connect_inner(&self, allow_tls: bool) -> Result<MaybeTls, String> {
        if self.addr.starts_with('/') {
            // The server answers an SSLRequest on a Unix socket with `N`;
            // the configuration already refused modes that need TLS.
            let unix = UnixStream::connect(&self.addr)
                .await
                .map_err(|e| format!("{}: {e}", self.addr))?;
            return Ok(MaybeTls::Unix(unix));
        }
        let mut tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let Some(tls) = self.tls.as_ref().filter(|_| allow_tls) else {
            return Ok(MaybeTls::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        match answer[0] {
            b'S' => {
                let name = server_name(&self.host)?;
                let stream = TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
                Ok(MaybeTls::Client(Box::new(stream)))
            }
            b'N' if self.mode == UpstreamTlsMode::Prefer => Ok(MaybeTls::Plain(tcp)),
            b'N' => Err(format!(
                "server {} does not support TLS, but --upstream-tls is {}",
                self.addr, self.mode
            )),
            other => Err(format!(
                "unexpected answer {other:#x} to SSLRequest from {}",
                self.addr
            )),
        }
    }

    /// Sends a `CancelRequest` packet on a fresh connection.
    pub async fn cancel(&self, packet: &[u8]) -> Result<(), String> {
        let (mut stream, _) = self.connect(true).await?;
        stream.write_all(packet).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(self.connect_timeout, stream.read(&mut sink)).await;
        Ok(())
    }
}
