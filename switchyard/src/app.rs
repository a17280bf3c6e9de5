//! `switchyard serve` as a library: the wire proxy and the control API in one
//! process, started and stopped together.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use switchyard_control::http;
use tokio::sync::watch;

use switchyard_proxy::metrics::ProxyMetrics;
use switchyard_proxy::routing::RulesHub;
use switchyard_proxy::server::{Proxy, ProxyHandle, State};

use crate::sink::HubSink;
use crate::ServeConfig;

/// A running `serve`.
pub struct App {
    proxy: ProxyHandle,
    api_stop: watch::Sender<bool>,
    api_task: tokio::task::JoinHandle<()>,
    /// Where applications connect.
    pub proxy_addr: SocketAddr,
    /// Where the control API listens.
    pub control_addr: SocketAddr,
    /// The proxy's metrics.
    pub metrics: ProxyMetrics,
    /// The routing rules (installed in-process until the control plane publishes them).
    pub rules: Arc<RulesHub>,
    /// The migration engine, when `database_url` is set.
    pub engine: Option<Arc<switchyard_control::Engine>>,
}

impl App {
    /// Binds both listeners and starts serving.
    pub async fn start(config: ServeConfig) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::new(&mut registry);
        let control = http::bind(&config.control_listen, config.control_token.is_some()).await?;
        let control_addr = control.local_addr()?;
        let token = config.control_token.clone();
        let database_url = config.database_url.clone();
        // Bound, but not accepting until the stored rules are installed: a
        // session served before that would not dual-write.
        let proxy = Proxy::bind(config.proxy, metrics.clone()).await?;
        let engine = match database_url {
            Some(url) => {
                let sink: Arc<dyn switchyard_control::RulesSink> = Arc::new(HubSink(proxy.rules()));
                let control_metrics =
                    switchyard_control::metrics::ControlMetrics::new(&mut registry);
                let instance = switchyard_control::fleet::Instance::new(
                    Some(proxy.local_addr().to_string()),
                    Some(control_addr.to_string()),
                );
                let engine = Arc::new(
                    switchyard_control::Engine::connect(&url, sink, control_metrics, instance)
                        .await
                        .map_err(|e| anyhow::anyhow!("control plane: {e}"))?,
                );
                engine
                    .join()
                    .await
                    .map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
                Some(engine)
            }
            None => None,
        };
        let proxy = proxy.spawn();
        let (api_stop, stop_rx) = watch::channel(false);
        let api = Arc::new(http::ApiState {
            registry: Mutex::new(registry),
            engine: engine.clone(),
            token,
            assets: crate::console::ASSETS,
        });
        let api_task = tokio::spawn(http::serve(control, api, stop_rx));
        Ok(App {
            proxy_addr: proxy.local_addr(),
            rules: proxy.rules(),
            engine,
            proxy,
            api_stop,
            api_task,
            control_addr,
            metrics,
        })
    }

    /// A sender that moves the proxy through drain and close (for signals).
    pub fn drainer(&self) -> Arc<watch::Sender<State>> {
        self.proxy.drainer()
    }

    /// Waits for the proxy to stop (after a drain), then stops the API.
    pub async fn wait(self) {
        self.proxy.wait().await;
        if let Some(engine) = &self.engine {
            engine.leave().await;
        }
        let _ = self.api_stop.send(true);
        let _ = self.api_task.await;
    }

    /// Drains and stops everything.
    pub async fn shutdown(self) {
        self.drainer().send_replace(State::Draining);
        self.wait().await;
    }
}
