//! The control API as a test drives it: calls, verbs that wait for their
//! job, and waits on the migration's detail.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A control API with its token.
#[derive(Debug, Clone)]
pub struct Api {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its bearer token.
    pub token: String,
}

impl Api {
    /// The API at `addr` behind `token`.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Api {
            addr,
            token: token.to_owned(),
        }
    }

    /// One call: status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        crate::tools::api(self.addr, &self.token, method, path, body).await
    }

    /// `POST /v1/migrations/{name}/{verb}`.
    pub async fn verb(&self, name: &str, verb: &str) -> (u16, Value) {
        self.call("POST", &format!("/v1/migrations/{name}/{verb}"), None)
            .await
    }

    /// The migration's detail.
    pub async fn detail(&self, name: &str) -> Value {
        self.call("GET", &format!("/v1/migrations/{name}"), None)
            .await
            .1
    }

    /// Posts `verb`, asserts the status, and for a 202 waits until its job
    /// is done (failing on a failed job or after two minutes).
    pub async fn step(&self, name: &str, verb: &str, status: u16) -> Value {
        let (got, body) = self.verb(name, verb).await;
        assert_eq!(got, status, "{verb}: {body}");
        if got != 202 {
            return body;
        }
        self.wait(name, |d| {
            assert_ne!(d["job"]["state"], "failed", "{d}");
            d["job"]["state"] == "done"
        })
        .await
    }

    /// Waits until the detail satisfies `done` (two minutes at most).
    pub async fn wait(&self, name: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self.detail(name).await;
            if done(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "timed out: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
