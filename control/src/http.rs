//! The HTTP control API server.
//!
//! Today it serves liveness and Prometheus metrics; the migration API joins
//! it. Every response is JSON except `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// State the API handlers read.
pub struct ApiState {
    /// Metrics of every component of this process.
    pub registry: Mutex<Registry>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// Binding failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// A non-loopback address without a token would expose the API.
    #[error("refusing to serve the control API on non-loopback {0} without a token (set SWITCHYARD_CONTROL_TOKEN or --control-token-file)")]
    NoToken(String),
}

/// Binds the control API; refuses a non-loopback address without a token.
pub async fn bind(addr: &str, has_token: bool) -> Result<TcpListener, ApiStartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ApiStartError::Bind(addr.to_owned(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ApiStartError::Bind(addr.to_owned(), e))?;
    if !has_token && !local.ip().is_loopback() {
        return Err(ApiStartError::NoToken(local.to_string()));
    }
    Ok(listener)
}

/// Serves the API until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, mut stop: watch::Receiver<bool>) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    info!(listen = ?local, "control API listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await
                    {
                        warn!(error = %e, "control API connection");
                    }
                });
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/metrics") => {
            let mut text = String::new();
            let encoded = {
                let registry = state.registry.lock().unwrap_or_else(|p| p.into_inner());
                prometheus_client::encoding::text::encode(&mut text, &registry)
            };
            match encoded {
                Ok(()) => Response::builder()
                    .header(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default(),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            }
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    };
    Ok(response)
}

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// The API's error shape: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}),
    )
}
