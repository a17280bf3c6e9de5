//! The HTTP control API server.
//!
//! Today it serves liveness and Prometheus metrics; the migration API joins
//! it. Every response is JSON except `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use switchyard_rules::migration::{MigrationSpec, Verb};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::ControlError;

/// State the API handlers read.
pub struct ApiState {
    /// Metrics of every component of this process.
    pub registry: Mutex<Registry>,
    /// The migration engine, when `--database-url` is set.
    pub engine: Option<Arc<Engine>>,
    /// The bearer token every `/v1` call must carry, if set.
    pub token: Option<String>,
    /// Static files served as they are (the console).
    pub assets: &'static [Asset],
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

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's longest life, requests included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest request body read.
const MAX_BODY: usize = 1024 * 1024;

/// Serves the API until `stop` turns true. Nobody, authenticated or not,
/// holds more than a bounded share of it: connections are counted, their
/// headers and lives timed, their bodies capped.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, mut stop: watch::Receiver<bool>) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    info!(listen = ?local, "control API listening");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: back off.
                warn!(error = %e, "control API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!("control API connection refused: {MAX_CONNECTIONS} are open");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => warn!(error = %e, "control API connection"),
                Err(_) => info!("control API connection closed after {CONNECTION_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The API described in OpenAPI 3, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

/// A static file the API serves without a token (the console's).
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    /// Its `content-type`.
    pub content_type: &'static str,
    /// Its text.
    pub body: &'static str,
}

fn asset(content_type: &str, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header(
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; form-action 'none'",
        )
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if !matches!(*req.method(), Method::GET | Method::POST | Method::PATCH) {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{} is not served; use GET, POST or PATCH", req.method()),
        ));
    }
    let file = state.assets.iter().find(|a| a.path == path);
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::GET, "/openapi.json") => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(OPENAPI.as_bytes())))
            .unwrap_or_default(),
        (&Method::GET, _) if file.is_some() => file
            .map(|a| asset(a.content_type, a.body))
            .unwrap_or_default(),
        (_, p) if p.starts_with("/v1/") => match v1(&state, req).await {
            Ok((status, body)) => json(status, body),
            Err(e) => error(e.status(), e.code(), &e.to_string()),
        },
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    };
    Ok(response)
}

fn metrics(state: &ApiState) -> Response<Full<Bytes>> {
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

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn v1(
    state: &ApiState,
    req: Request<Incoming>,
) -> Result<(StatusCode, serde_json::Value), ControlError> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ControlError::Unauthorized("missing bearer token".into()))?;
        if !same(given.as_bytes(), token.as_bytes()) {
            return Err(ControlError::Unauthorized("bad bearer token".into()));
        }
    }
    let actor = req
        .headers()
        .get("x-switchyard-actor")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if state.token.is_some() {
            "token"
        } else {
            "local"
        })
        .to_owned();
    let engine = state.engine.clone().ok_or_else(|| {
        ControlError::Unavailable("no --database-url: the control plane is off".into())
    })?;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let force = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ControlError::TooLarge(format!("request bodies are limited to {MAX_BODY} bytes"))
            } else {
                ControlError::BadRequest(format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["status"]) => Ok((StatusCode::OK, engine.status().await?)),
        (Method::GET, ["events"]) => Ok((StatusCode::OK, engine.events().await?)),
        (Method::GET, ["migrations"]) => Ok((StatusCode::OK, engine.list().await?)),
        (Method::POST, ["migrations"]) => {
            let spec: MigrationSpec = serde_json::from_slice(&body)
                .map_err(|e| ControlError::BadRequest(format!("invalid migration spec: {e}")))?;
            Ok((StatusCode::CREATED, engine.create(spec, &actor).await?))
        }
        (Method::GET, ["migrations", name]) => Ok((StatusCode::OK, engine.detail(name).await?)),
        (Method::POST, ["migrations", name, "pause"]) => {
            Ok((StatusCode::OK, engine.pause(name, true, &actor).await?))
        }
        (Method::POST, ["migrations", name, "resume"]) => {
            Ok((StatusCode::OK, engine.pause(name, false, &actor).await?))
        }
        (Method::PATCH, ["migrations", name, "backfill"]) => {
            let settings: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ControlError::BadRequest(format!("invalid JSON: {e}")))?;
            Ok((StatusCode::OK, engine.tune(name, &settings, &actor).await?))
        }
        (Method::GET, ["blockers"]) => Ok((StatusCode::OK, engine.blockers().await?)),
        (Method::POST, ["blockers", pid, action @ ("cancel" | "terminate")]) => {
            let pid: i32 = match pid.parse::<i64>() {
                Ok(n) => i32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                    ControlError::BadRequest(format!(
                        "pid: {n} is out of range (1 to {})",
                        i32::MAX
                    ))
                })?,
                Err(_) => {
                    return Err(ControlError::BadRequest(format!(
                        "pid: {pid:?} is not a number"
                    )))
                }
            };
            Ok((
                StatusCode::OK,
                engine
                    .remove_blocker(pid, *action == "terminate", &actor)
                    .await?,
            ))
        }
        (Method::POST, ["migrations", name, "revert"]) => {
            Ok((StatusCode::OK, engine.revert(Some(name), &actor).await?))
        }
        (Method::POST, ["migrations", name, verb]) => {
            let verb = Verb::parse(verb)
                .ok_or_else(|| ControlError::NotFound(format!("no verb {verb}")))?;
            let body = engine.apply(name, verb, force, &actor).await?;
            let status = if body["accepted"] == true {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok((status, body))
        }
        (Method::POST, ["revert"]) => Ok((StatusCode::OK, engine.revert(None, &actor).await?)),
        (_, _) => Err(ControlError::NotFound(format!("no route for {path}"))),
    }
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
