//! The listener: accepts connections, spawns sessions, drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::closing::Closing;
use crate::config::ProxyConfig;
use crate::metrics::ProxyMetrics;
use crate::relay_loop::RelayThreads;
use crate::routing::RulesHub;
use crate::tls;
use crate::upstream::Upstream;
use crate::workers::Workers;

/// Lifecycle of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepting and serving.
    Running,
    /// Not accepting; open sessions may finish.
    Draining,
    /// Open sessions are being closed.
    Closing,
}

/// What every session of one proxy shares.
pub struct Shared {
    /// The resolved configuration.
    pub config: ProxyConfig,
    /// The upstream server.
    pub upstream: Upstream,
    /// TLS for application connections, if configured.
    pub tls_acceptor: Option<TlsAcceptor>,
    /// Metrics.
    pub metrics: ProxyMetrics,
    /// Backend keys of the sessions we serve, so cancels go only to them.
    pub cancel_keys: DashMap<Bytes, ()>,
    /// The proxy's lifecycle state.
    pub state: watch::Receiver<State>,
    /// Routing rules.
    pub rules: Arc<RulesHub>,
    /// Set once the state is `Closing`: what relays poll.
    pub(crate) closing: Arc<Closing>,
    /// The threads sessions run on.
    pub(crate) workers: Workers,
    /// The threads plain sessions are relayed on after login.
    pub(crate) relay_threads: RelayThreads,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files or settings are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// The session threads could not be started.
    #[error("cannot start the session threads: {0}")]
    Threads(std::io::Error),
}

/// A bound proxy, not yet accepting.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    state_tx: watch::Sender<State>,
}

impl Proxy {
    /// Binds the listen address and prepares TLS.
    pub async fn bind(config: ProxyConfig, metrics: ProxyMetrics) -> Result<Self, StartError> {
        let tls_acceptor = match &config.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
            None => None,
        };
        let upstream = Upstream {
            addr: config.upstream.clone(),
            host: config.upstream_host().to_owned(),
            mode: config.upstream_tls,
            tls: tls::client_config(config.upstream_tls, config.upstream_ca.as_deref())?,
            connect_timeout: config.connect_timeout,
        };
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen.clone(), e))?;
        let (state_tx, state) = watch::channel(State::Running);
        let closing = Arc::new(Closing::default());
        let threads = config.thread_count();
        let relay_threads = RelayThreads::start(threads, closing.clone(), Handle::current())
            .map_err(StartError::Threads)?;
        let shared = Arc::new(Shared {
            config,
            upstream,
            tls_acceptor,
            metrics,
            cancel_keys: DashMap::new(),
            state,
            rules: Arc::new(RulesHub::default()),
            closing,
            workers: Workers::start(threads).map_err(StartError::Threads)?,
            relay_threads,
        });
        Ok(Proxy {
            shared,
            listener,
            state_tx,
        })
    }

    /// The address applications connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The rules its sessions will read.
    pub fn rules(&self) -> Arc<RulesHub> {
        self.shared.rules.clone()
    }

    /// Starts accepting in a background task.
    pub fn spawn(self) -> ProxyHandle {
        let addr = self.local_addr();
        let rules = self.shared.rules.clone();
        let drain = self.shared.config.drain_timeout;
        let state_tx = Arc::new(self.state_tx);
        let task = tokio::spawn(accept_loop(
            self.shared,
            self.listener,
            state_tx.clone(),
            drain,
        ));
        ProxyHandle {
            addr,
            state_tx,
            task,
            rules,
        }
    }
}

/// Controls a running proxy.
pub struct ProxyHandle {
    addr: SocketAddr,
    rules: Arc<RulesHub>,
    state_tx: Arc<watch::Sender<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyHandle {
    /// The address applications connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets sessions finish within the drain timeout, closes
    /// the rest, and returns when every session is gone.
    pub async fn shutdown(self) {
        self.state_tx.send_replace(State::Draining);
        let _ = self.task.await;
    }

    /// Waits until the proxy has stopped (after `shutdown` from a signal).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// The routing rules of this proxy.
    pub fn rules(&self) -> Arc<RulesHub> {
        self.rules.clone()
    }

    /// A sender that starts the drain, for signal handlers.
    pub fn drainer(&self) -> Arc<watch::Sender<State>> {
        self.state_tx.clone()
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    state_tx: Arc<watch::Sender<State>>,
    drain: Duration,
) {
    let mut sessions = JoinSet::new();
    let mut state = shared.state.clone();
    let to_close = shared.clone();
    let closer = tokio::spawn(async move {
        let mut state = to_close.state.clone();
        wait_until(&mut state, |s| s == State::Closing).await;
        to_close.closing.close();
    });
    info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), upstream = %shared.config.upstream, "proxy listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match tcp.into_std() {
                    // Re-registered on the session thread's own runtime.
                    Ok(tcp) => {
                        let session = crate::session::run_std(shared.clone(), tcp, peer);
                        shared.workers.spawn(&mut sessions, session);
                    }
                    Err(e) => warn!(error = %e, %peer, "cannot hand the connection over"),
                },
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = wait_until(&mut state, |s| s != State::Running) => break,
        }
    }
    drop(listener);
    info!(
        open_sessions = sessions.len(),
        drain_secs = drain.as_secs(),
        "draining"
    );
    let drained = tokio::time::timeout(drain, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open_sessions = sessions.len(),
            "drain timeout reached; closing sessions"
        );
        state_tx.send_replace(State::Closing);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            sessions.abort_all();
        }
    }
    closer.abort();
    info!("proxy stopped");
}

/// Resolves once the state satisfies `pred` (never, if the proxy is gone).
pub async fn wait_until(rx: &mut watch::Receiver<State>, pred: impl Fn(State) -> bool) {
    loop {
        if pred(*rx.borrow_and_update()) {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
