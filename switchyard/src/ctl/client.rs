//! A minimal HTTP/1.1 client for the control API (hyper's connection API).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Where and how to reach the control API.
#[derive(Debug, Clone)]
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:7432`.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Recorded as the actor in the audit log.
    pub actor: String,
}

impl Api {
    /// Sends a request; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let base = self.url.trim_end_matches('/');
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--url must start with http:// (got {base})"))?;
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the control API at {base}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("host", authority)
            .header("content-type", "application/json")
            .header("x-switchyard-actor", &self.actor);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = sender
            .send_request(request.body(Full::new(payload))?)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }
}
