//! One client session: negotiation, relayed authentication, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::auth;
use crate::error::{error_fields, SessionError};
use crate::filters::{ClientFilter, ServerFilter};
use crate::frame::{take_frame, Frame, FrameScanner};
use crate::relay::{Ended, Pump, PumpEnd, PumpError};
use crate::relay_loop::{Handover, Sock};
use crate::routing::SessionRouter;
use crate::server::Shared;
use crate::startup::{self, StartupMessage, StartupPacket};
use crate::stream::MaybeTls;
use crate::tls::UpstreamTlsMode;

/// What a finished session reports in its log line.
#[derive(Debug, Default)]
struct Summary {
    user: String,
    database: String,
    bytes_in: u64,
    bytes_out: u64,
}

/// [`run`] for a connection accepted on another runtime: it is registered
/// with the one this runs on.
pub(crate) async fn run_std(shared: Arc<Shared>, tcp: std::net::TcpStream, peer: SocketAddr) {
    match TcpStream::from_std(tcp) {
        Ok(tcp) => run(shared, tcp, peer).await,
        Err(e) => warn!(%peer, error = %e, "cannot register the connection"),
    }
}

/// Serves one accepted connection to the end, logging open and close.
pub(crate) async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    shared.metrics.sessions_total.inc();
    shared.metrics.sessions_active.inc();
    let mut summary = Summary::default();
    let outcome = serve(&shared, tcp, peer, &mut summary).await;
    shared.metrics.sessions_active.dec();
    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(how) => info!(
            %peer, user = %summary.user, database = %summary.database, duration_ms,
            bytes_in = summary.bytes_in, bytes_out = summary.bytes_out, how, "session closed"
        ),
        Err(e) => {
            shared.metrics.error(error_kind(&e));
            warn!(
                %peer, user = %summary.user, database = %summary.database, duration_ms,
                bytes_in = summary.bytes_in, bytes_out = summary.bytes_out, error = %e, "session closed"
            )
        }
    }
}

fn error_kind(e: &SessionError) -> &'static str {
    match e {
        SessionError::Protocol(_) => "protocol",
        SessionError::UpstreamConnect(_) => "upstream_connect",
        SessionError::UpstreamLost => "upstream_lost",
        SessionError::Shutdown => "shutdown",
        SessionError::Unsupported(_) => "unsupported",
        SessionError::ClientIo(_) => "client_io",
    }
}

async fn serve(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    summary: &mut Summary,
) -> Result<&'static str, SessionError> {
    tcp.set_nodelay(true)?;
    let timeout = shared.config.startup_timeout;
    let negotiated = tokio::time::timeout(timeout, negotiate(shared, tcp)).await;
    let (mut client, startup, early) = match negotiated {
        Err(_) => {
            return Err(SessionError::Protocol(
                "timed out waiting for startup".into(),
            ))
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Negotiated::Cancelled)) => return Ok("cancel request"),
        Ok(Ok(Negotiated::Refused(mut client, e))) => {
            let _ = client.write_all(&e.to_frame()).await;
            let _ = client.shutdown().await;
            return Err(e);
        }
        Ok(Ok(Negotiated::Startup(client, startup, early))) => (client, startup, early),
    };
    summary.user = startup.user().to_owned();
    summary.database = startup.database().to_owned();
    info!(%peer, user = %summary.user, database = %summary.database, tls = client.is_tls(), "session opened");

    let connected =
        tokio::time::timeout(timeout, authenticate(shared, &mut client, &startup, early)).await;
    let (server, key, client_buf, server_buf) = match connected {
        Ok(Ok(Some(parts))) => parts,
        Ok(Ok(None)) => return Ok("authentication refused by server"),
        Ok(Err(e)) => {
            let _ = client.write_all(&e.to_frame()).await;
            let _ = client.shutdown().await;
            return Err(e);
        }
        Err(_) => {
            let e = SessionError::Protocol("timed out during authentication".into());
            let _ = client.write_all(&e.to_frame()).await;
            return Err(e);
        }
    };
    if let Some(key) = &key {
        shared.cancel_keys.insert(key.clone(), ());
    }
    let search_path = startup_search_path(&startup);
    let router = Arc::new(SessionRouter::new(
        shared.rules.clone(),
        startup.user(),
        startup.database(),
        search_path.as_deref(),
    ));
    let result = relay(
        shared, client, server, client_buf, server_buf, router, summary,
    )
    .await;
    if let Some(key) = &key {
        shared.cancel_keys.remove(key);
    }
    result
}

enum Negotiated {
    /// With the bytes the client sent after its startup packet.
    Startup(MaybeTls, StartupMessage, BytesMut),
    Refused(MaybeTls, SessionError),
    Cancelled,
}

/// Reads packets until a `StartupMessage`, answering SSL and GSS requests.
async fn negotiate(shared: &Shared, tcp: TcpStream) -> Result<Negotiated, SessionError> {
    let mut stream = MaybeTls::Plain(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    // PostgreSQL answers one SSLRequest and one GSSENCRequest; a second is
    // an unsupported protocol.
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let raw = match read_packet(&mut stream, &mut buf).await {
            Ok(raw) => raw,
            Err(e @ SessionError::Protocol(_)) => return Ok(Negotiated::Refused(stream, e)),
            Err(e) => return Err(e),
        };
        let packet = match startup::parse(raw) {
            Ok(p) => p,
            Err(e) => return Ok(Negotiated::Refused(stream, e.into())),
        };
        match packet {
            StartupPacket::SslRequest => {
                if stream.is_tls() || ssl_done {
                    let e = SessionError::Protocol(
                        "unsupported frontend protocol 1234.5679: a second SSLRequest".into(),
                    );
                    return Ok(Negotiated::Refused(stream, e));
                }
                ssl_done = true;
                let MaybeTls::Plain(tcp) = stream else {
                    unreachable!("checked above")
                };
                let Some(acceptor) = &shared.tls_acceptor else {
                    let mut tcp = tcp;
                    tcp.write_all(b"N").await?;
                    stream = MaybeTls::Plain(tcp);
                    continue;
                };
                if !buf.is_empty() {
                    // Bytes sent before the handshake would be trusted as if
                    // encrypted (CVE-2021-23214); refuse them.
                    return Err(SessionError::Protocol(
                        "unencrypted data after SSL request".into(),
                    ));
                }
                let mut tcp = tcp;
                tcp.write_all(b"S").await?;
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| SessionError::Protocol(format!("TLS handshake failed: {e}")))?;
                stream = MaybeTls::Server(Box::new(tls));
            }
            StartupPacket::GssEncRequest if gss_done => {
                let e = SessionError::Protocol(
                    "unsupported frontend protocol 1234.5680: a second GSSENCRequest".into(),
                );
                return Ok(Negotiated::Refused(stream, e));
            }
            StartupPacket::GssEncRequest => {
                gss_done = true;
                stream.write_all(b"N").await?
            }
            StartupPacket::Cancel { raw, key } => {
                forward_cancel(shared, &raw, &key).await;
                return Ok(Negotiated::Cancelled);
            }
            // What came after the startup packet is read later, as the
            // server would: as the password reply, or as the first query.
            StartupPacket::Startup(startup) => {
                return Ok(Negotiated::Startup(stream, startup, buf))
            }
        }
    }
}

async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Bytes, SessionError> {
    loop {
        if let Some(len) = startup::packet_len(buf)? {
            return Ok(buf.split_to(len).freeze());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

async fn forward_cancel(shared: &Shared, raw: &[u8], key: &Bytes) {
    if !shared.cancel_keys.contains_key(key) {
        info!("cancel request for a session not served by this proxy ignored");
        return;
    }
    shared.metrics.cancels.inc();
    if let Err(e) = shared.upstream.cancel(raw).await {
        warn!(error = %e, "could not forward cancel request");
    }
}

type Authenticated = (MaybeTls, Option<Bytes>, BytesMut, BytesMut);

/// Connects upstream and relays authentication until the first `ReadyForQuery`.
///
/// Returns `None` when the server refused the login (its error was relayed).
async fn authenticate(
    shared: &Shared,
    client: &mut MaybeTls,
    startup: &StartupMessage,
    early: BytesMut,
) -> Result<Option<Authenticated>, SessionError> {
    let mut server = connect(shared, startup, true).await?;
    // Before login, a client message is a password or SASL token, which
    // PostgreSQL caps at 64 KiB: nobody unauthenticated may make us buffer
    // more.
    let max = AUTH_MAX_FRAME;
    let mut cbuf = early;
    let mut sbuf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(1024);
    let mut key = None;
    loop {
        let frame = read_server_frame(&mut server, &mut sbuf).await?;
        match frame.tag {
            b'R' => {
                let code = auth::request_code(&frame).unwrap_or(-1);
                let frame = auth::strip_channel_binding(&frame).unwrap_or(frame);
                frame.encode(&mut out);
                if !auth::expects_client_reply(code) {
                    continue;
                }
                client.write_all(&out).await?;
                client.flush().await?;
                out.clear();
                let reply = read_frame(client, &mut cbuf, max).await?;
                if code == 10 && server.is_tls() && auth::claims_channel_binding_support(&reply) {
                    server = plain_sasl_connection(shared, startup, &mut sbuf).await?;
                }
                write_final(&mut server, &reply.to_bytes())
                    .await
                    .map_err(|_| SessionError::UpstreamLost)?;
            }
            b'E' => {
                frame.encode(&mut out);
                client.write_all(&out).await?;
                let _ = client.shutdown().await;
                return Ok(None);
            }
            b'K' => {
                key = Some(frame.body.clone());
                frame.encode(&mut out);
            }
            b'Z' => {
                frame.encode(&mut out);
                client.write_all(&out).await?;
                client.flush().await?;
                return Ok(Some((server, key, cbuf, sbuf)));
            }
            _ => frame.encode(&mut out),
        }
    }
}

/// A TLS client that supports channel binding announces it with gs2 flag `y`,
/// which a TLS server rejects as a downgrade. The binding cannot survive a
/// relay, so under `prefer` we redo the login over a plain upstream connection.
async fn plain_sasl_connection(
    shared: &Shared,
    startup: &StartupMessage,
    sbuf: &mut BytesMut,
) -> Result<MaybeTls, SessionError> {
    if shared.upstream.mode != UpstreamTlsMode::Prefer {
        return Err(SessionError::Unsupported(format!(
            "SCRAM channel binding cannot pass through a proxy whose upstream connection uses TLS \
             (--upstream-tls {}); connect with channel_binding=disable",
            shared.upstream.mode
        )));
    }
    info!(
        "client offered SCRAM channel binding; continuing login over a plain upstream connection"
    );
    let mut server = connect(shared, startup, false).await?;
    sbuf.clear();
    let frame = read_server_frame(&mut server, sbuf).await?;
    if frame.tag != b'R' || auth::request_code(&frame) != Some(10) {
        return Err(SessionError::UpstreamConnect(
            "server changed its authentication method on reconnect".into(),
        ));
    }
    Ok(server)
}

async fn connect(
    shared: &Shared,
    startup: &StartupMessage,
    allow_tls: bool,
) -> Result<MaybeTls, SessionError> {
    let (mut server, took) = shared.upstream.connect(allow_tls).await.map_err(|e| {
        shared.metrics.error("upstream_connect");
        SessionError::UpstreamConnect(e)
    })?;
    shared
        .metrics
        .upstream_connect_seconds
        .observe(took.as_secs_f64());
    write_final(&mut server, &startup.raw)
        .await
        .map_err(|_| SessionError::UpstreamLost)?;
    Ok(server)
}

async fn read_server_frame(
    server: &mut MaybeTls,
    buf: &mut BytesMut,
) -> Result<Frame, SessionError> {
    read_frame(server, buf, SERVER_MAX_FRAME)
        .await
        .map_err(|e| match e {
            SessionError::ClientIo(_) => SessionError::UpstreamLost,
            other => other,
        })
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, SessionError> {
    loop {
        if let Some(frame) = take_frame(buf, max)? {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

/// PostgreSQL's own limit on a message from the server.
const SERVER_MAX_FRAME: usize = 1 << 30;
/// PostgreSQL's limit on an authentication message (PG_MAX_AUTH_TOKEN_LENGTH
/// plus the header).
const AUTH_MAX_FRAME: usize = 65535 + 5;
const STREAM_THRESHOLD: usize = 256 * 1024;
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// A session after its relay: how it ended, its connections and pumps.
struct Relayed {
    ended: Ended,
    client: MaybeTls,
    server: MaybeTls,
    c2s: Pump,
    s2c: Pump,
    /// The server sent a FATAL error (it closes the connection itself).
    fatal_seen: bool,
}

async fn relay(
    shared: &Shared,
    client: MaybeTls,
    server: MaybeTls,
    client_buf: BytesMut,
    server_buf: BytesMut,
    router: Arc<SessionRouter>,
    summary: &mut Summary,
) -> Result<&'static str, SessionError> {
    let client_scanner = FrameScanner {
        max_frame: shared.config.max_message_bytes,
        stream_threshold: STREAM_THRESHOLD,
        bulk_tags: b"d",
    };
    let server_scanner = FrameScanner {
        max_frame: SERVER_MAX_FRAME,
        stream_threshold: STREAM_THRESHOLD,
        bulk_tags: b"Dd",
    };
    let c2s_traffic = shared.metrics.traffic("client_to_server");
    let s2c_traffic = shared.metrics.traffic("server_to_client");
    let c2s = Pump::new(client_buf, client_scanner, c2s_traffic);
    let s2c = Pump::new(server_buf, server_scanner, s2c_traffic);
    let client_filter = ClientFilter::new(router.clone());
    let server_filter = ServerFilter {
        fatal_seen: false,
        router,
    };
    let relayed = if !client.is_tls() && !server.is_tls() {
        relay_on_thread(
            shared,
            client,
            server,
            c2s,
            s2c,
            client_filter,
            server_filter,
        )
        .await?
    } else {
        relay_here(
            shared,
            client,
            server,
            c2s,
            s2c,
            client_filter,
            server_filter,
        )
        .await
    };
    close(relayed, summary).await
}

/// Relays a plain session on a relay thread (see [`crate::relay_loop`]).
async fn relay_on_thread(
    shared: &Shared,
    client: MaybeTls,
    server: MaybeTls,
    c2s: Pump,
    s2c: Pump,
    client_filter: ClientFilter,
    server_filter: ServerFilter,
) -> Result<Relayed, SessionError> {
    let (Ok(client), Ok(server)) = (Sock::from_tokio(client), Sock::from_tokio(server)) else {
        unreachable!("both connections are plain")
    };
    let server = server.map_err(|_| SessionError::UpstreamLost)?;
    let finished = shared.relay_threads.hand_over(Handover {
        client: client?,
        server,
        c2s,
        s2c,
        client_filter,
        server_filter,
    });
    // The relay thread is gone only when the proxy is.
    let f = finished.await.map_err(|_| SessionError::Shutdown)?;
    Ok(Relayed {
        ended: f.ended,
        client: f.client.into_tokio()?,
        server: f
            .server
            .into_tokio()
            .map_err(|_| SessionError::UpstreamLost)?,
        c2s: f.c2s,
        s2c: f.s2c,
        fatal_seen: f.fatal_seen,
    })
}

/// Relays a session on this task: a TLS one.
async fn relay_here(
    shared: &Shared,
    mut client: MaybeTls,
    mut server: MaybeTls,
    mut c2s: Pump,
    mut s2c: Pump,
    mut client_filter: ClientFilter,
    mut server_filter: ServerFilter,
) -> Relayed {
    let ended = {
        let (mut cr, mut cw) = client.halves();
        let (mut sr, mut sw) = server.halves();
        // `biased`: polled in this order, without drawing a random number
        // on every wake-up (the pumps cannot starve the shutdown branch: it
        // only matters once they wait).
        tokio::select! {
            biased;
            r = c2s.run(&mut cr, &mut sw, &mut client_filter) => Ended::Client(r),
            r = s2c.run(&mut sr, &mut cw, &mut server_filter) => Ended::Server(r),
            _ = shared.closing.wait() => Ended::Shutdown,
        }
    };
    Relayed {
        ended,
        client,
        server,
        c2s,
        s2c,
        fatal_seen: server_filter.fatal_seen,
    }
}

/// Ends a relayed session: tells the client why if it is owed that, and
/// the server that we leave if it can take it.
async fn close(relayed: Relayed, summary: &mut Summary) -> Result<&'static str, SessionError> {
    let Relayed {
        ended,
        mut client,
        mut server,
        c2s,
        s2c,
        fatal_seen,
    } = relayed;
    summary.bytes_in = c2s.bytes_read();
    summary.bytes_out = s2c.bytes_read();

    let (result, to_client, to_server): (Result<&'static str, SessionError>, Option<Bytes>, bool) =
        match ended {
            Ended::Client(Ok(PumpEnd::Stopped)) => (Ok("client terminated"), None, false),
            Ended::Client(Ok(PumpEnd::Eof)) => (Ok("client disconnected"), None, c2s.at_boundary()),
            Ended::Client(Err(PumpError::Read(e))) => {
                (Err(SessionError::ClientIo(e)), None, c2s.at_boundary())
            }
            Ended::Client(Err(PumpError::Write(_)))
            | Ended::Server(Ok(_))
            | Ended::Server(Err(PumpError::Read(_))) => {
                let e = SessionError::UpstreamLost;
                let frame = (!fatal_seen).then(|| e.to_frame());
                (Err(e), frame, false)
            }
            Ended::Client(Err(PumpError::Frame(f))) => {
                let e = SessionError::from(f);
                let frame = e.to_frame();
                (Err(e), Some(frame), false)
            }
            Ended::Server(Err(PumpError::Write(e))) => {
                (Err(SessionError::ClientIo(e)), None, c2s.at_boundary())
            }
            Ended::Server(Err(PumpError::Frame(f))) => {
                let e = SessionError::Protocol(format!("invalid message from server: {f}"));
                let frame = e.to_frame();
                (Err(e), Some(frame), false)
            }
            Ended::Shutdown => {
                let e = SessionError::Shutdown;
                let frame = e.to_frame();
                (Err(e), Some(frame), c2s.at_boundary())
            }
        };
    if let Some(frame) = to_client.filter(|_| s2c.at_boundary()) {
        let _ =
            tokio::time::timeout(Duration::from_secs(1), write_final(&mut client, &frame)).await;
    }
    if to_server {
        let _ = tokio::time::timeout(Duration::from_secs(1), write_final(&mut server, &TERMINATE))
            .await;
    }
    let _ = client.shutdown().await;
    result
}

async fn write_final<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Whether an `ErrorResponse` body is FATAL or PANIC (the server closes next).
pub(crate) fn is_fatal(body: &[u8]) -> bool {
    matches!(error_fields(body).0, Some(b"FATAL") | Some(b"PANIC"))
}

/// The search path a session starts with: the `search_path` startup
/// parameter, or `-c search_path=...` in `options`.
fn startup_search_path(startup: &StartupMessage) -> Option<String> {
    if let Some(sp) = startup.params.get("search_path") {
        return Some(sp.clone());
    }
    let options = startup.params.get("options")?;
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let setting = match w {
            "-c" => words.next()?,
            w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c"))?,
        };
        if let Some(v) = setting.strip_prefix("search_path=") {
            return Some(v.to_owned());
        }
    }
    None
}
