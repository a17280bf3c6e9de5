//! The relay loop against real sockets: bytes unchanged both ways in
//! order, through partial writes and read budgets, a heavy frame handled
//! off the thread, an end of stream right after the last bytes, and the
//! proxy closing.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::frame::{Frame, FrameScanner};
use crate::metrics::Traffic;
use crate::relay::PumpEnd;
use crate::routing::{RulesHub, SessionRouter};

/// A connected pair: the test's end and the relay's.
async fn pair() -> (TcpStream, Sock) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (theirs, _) = listener.accept().await.unwrap();
    let theirs = mio::net::TcpStream::from_std(theirs.into_std().unwrap());
    (ours, Sock::Tcp(theirs))
}

fn pump(bulk_tags: &'static [u8]) -> Pump {
    let scanner = FrameScanner {
        max_frame: 1 << 24,
        stream_threshold: 256 * 1024,
        bulk_tags,
    };
    Pump::new(BytesMut::new(), scanner, Traffic::default())
}

struct Session {
    app: TcpStream,
    db: TcpStream,
    finished: oneshot::Receiver<Finished>,
}

async fn start(threads: &RelayThreads) -> Session {
    let (app, client) = pair().await;
    let (db, server) = pair().await;
    let hub = Arc::new(RulesHub::default());
    let router = Arc::new(SessionRouter::new(hub, "app", "app", None));
    let finished = threads.hand_over(Handover {
        client,
        server,
        c2s: pump(b"d"),
        s2c: pump(b"Dd"),
        client_filter: ClientFilter::new(router.clone()),
        server_filter: ServerFilter {
            fatal_seen: false,
            router,
        },
    });
    Session { app, db, finished }
}

/// Bounds a wait that must end, so that a lost wake-up fails the test.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"))
}

fn threads() -> (RelayThreads, Arc<Closing>) {
    let closing = Arc::new(Closing::default());
    let threads = RelayThreads::start(1, closing.clone(), Handle::current()).unwrap();
    (threads, closing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_both_ways_unchanged_and_hands_the_sockets_back() {
    let (threads, _closing) = threads();
    let mut s = start(&threads).await;
    // Far more than a read's scratch, a read budget and the socket
    // buffers: partial writes, yields and blocked reads all happen.
    let mut sent = BytesMut::new();
    for i in 0..3_000u32 {
        let body = format!("select {i}, '{}'\0", "x".repeat((i % 700) as usize));
        Frame::new(b'Q', body.into_bytes()).encode(&mut sent);
    }
    let mut rows = BytesMut::new();
    for i in 0..3_000u32 {
        Frame::new(b'D', vec![(i % 251) as u8; (i % 900) as usize]).encode(&mut rows);
    }
    let (mut app_rd, mut app_wr) = s.app.split();
    let (mut db_rd, mut db_wr) = s.db.split();
    let (got_db, got_app, (), ()) = within(
        "relaying",
        futures_join(
            read_exactly(&mut db_rd, sent.len()),
            read_exactly(&mut app_rd, rows.len()),
            async { app_wr.write_all(&sent).await.unwrap() },
            async { db_wr.write_all(&rows).await.unwrap() },
        ),
    )
    .await;
    assert!(got_db == sent, "client to server changed");
    assert!(got_app == rows, "server to client changed");

    s.app.shutdown().await.unwrap();
    let f = within("the end", s.finished).await.unwrap();
    assert!(matches!(f.ended, Ended::Client(Ok(PumpEnd::Eof))));
    assert_eq!(f.c2s.bytes_read(), sent.len() as u64);
    assert!(f.c2s.at_boundary() && f.s2c.at_boundary());
    // The sockets come back usable.
    let mut server = f.server.into_tokio().unwrap();
    server.write_all(b"bye").await.unwrap();
    let mut bye = [0; 3];
    s.db.read_exact(&mut bye).await.unwrap();
    assert_eq!(&bye, b"bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_statement_is_handled_off_the_thread_in_order() {
    let (threads, _closing) = threads();
    let mut s = start(&threads).await;
    let mut sent = BytesMut::new();
    Frame::new(b'Q', &b"select 1\0"[..]).encode(&mut sent);
    let long = format!(
        "select '{}'\0",
        "y".repeat(crate::routing::router::HEAVY * 2)
    );
    Frame::new(b'Q', long.into_bytes()).encode(&mut sent);
    Frame::new(b'Q', &b"select 2\0"[..]).encode(&mut sent);
    s.app.write_all(&sent).await.unwrap();
    let got = within("the statements", read_exactly(&mut s.db, sent.len())).await;
    assert!(got == sent);
}

/// Whether bytes and end arrive in one readiness event here depends on
/// timing; `flow::tests` pins the case where they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_of_stream_sent_with_the_last_bytes_is_seen() {
    let (threads, _closing) = threads();
    let mut s = start(&threads).await;
    let terminate = Frame::new(b'Q', &b"select 1\0"[..]).to_bytes();
    // Bytes and FIN in one go: one readiness event for both.
    s.app.write_all(&terminate).await.unwrap();
    s.app.shutdown().await.unwrap();
    let got = within("the bytes", read_exactly(&mut s.db, terminate.len())).await;
    assert!(got == terminate);
    let f = within("the end of stream", s.finished).await.unwrap();
    assert!(matches!(f.ended, Ended::Client(Ok(PumpEnd::Eof))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_and_closing_ends_every_session() {
    let (threads, closing) = threads();
    let mut s = start(&threads).await;
    let terminate = Frame::new(b'X', &b""[..]).to_bytes();
    s.app.write_all(&terminate).await.unwrap();
    let f = within("the stop", s.finished).await.unwrap();
    assert!(matches!(f.ended, Ended::Client(Ok(PumpEnd::Stopped))));

    let waiting = start(&threads).await;
    closing.close();
    let f = within("the close", waiting.finished).await.unwrap();
    assert!(matches!(f.ended, Ended::Shutdown));
    // A session handed over after the close ends at once.
    let late = start(&threads).await;
    let f = within("the late close", late.finished).await.unwrap();
    assert!(matches!(f.ended, Ended::Shutdown));
}

async fn read_exactly(rd: &mut (impl AsyncReadExt + Unpin), n: usize) -> BytesMut {
    let mut got = BytesMut::zeroed(n);
    rd.read_exact(&mut got).await.unwrap();
    got
}

async fn futures_join<A, B, C, D>(
    a: impl std::future::Future<Output = A>,
    b: impl std::future::Future<Output = B>,
    c: impl std::future::Future<Output = C>,
    d: impl std::future::Future<Output = D>,
) -> (A, B, C, D) {
    tokio::join!(a, b, c, d)
}
