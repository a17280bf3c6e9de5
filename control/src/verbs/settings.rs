//! pause, resume and `PATCH .../backfill`: the operator's hold on the
//! backfill and its limits. Stored with the migration (so they survive
//! restarts and reach the job holder, which reads them before every
//! chunk), allowed in any phase, and applied to the next backfill too.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::{events, Settings};

use crate::engine::Engine;
use crate::error::ControlError;
use crate::fleet::JOBS_CHANNEL;
use crate::store::{self, Event};

impl Engine {
    /// Pauses or resumes the backfill before its next chunk.
    pub async fn pause(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let action = if paused { "pause" } else { "resume" };
        self.change_settings(name, actor, action, |s| {
            s.paused = paused;
            Ok(())
        })
        .await
    }

    /// Changes backfill limits while it runs (`null` lifts one).
    pub async fn tune(&self, name: &str, body: &Value, actor: &str) -> Result<Value, ControlError> {
        let object = body
            .as_object()
            .ok_or_else(|| ControlError::BadRequest("expected a JSON object".into()))?
            .clone();
        self.change_settings(name, actor, "tune", |s| tune(s, &object))
            .await
    }

    async fn change_settings(
        &self,
        name: &str,
        actor: &str,
        action: &str,
        change: impl FnOnce(&mut Settings) -> Result<(), ControlError>,
    ) -> Result<Value, ControlError> {
        let settings = {
            let mut client = self.db.session().await?;
            let tx = client.transaction().await?;
            let (m, ()) = store::update_in(&tx, name, |m| {
                let mut settings = m.state.settings.clone();
                change(&mut settings)?;
                Ok((events::set_settings(&m.state, settings), ()))
            })
            .await?;
            let event = Event {
                actor,
                migration: Some(name),
                action,
                detail: json!(m.state.settings),
            };
            store::record(&tx, event).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &name])
                .await?;
            tx.commit().await?;
            m.state.settings
        };
        self.runner.set_settings(name, settings);
        self.detail(name).await
    }
}

/// Applies a `PATCH .../backfill` body.
fn tune(s: &mut Settings, body: &serde_json::Map<String, Value>) -> Result<(), ControlError> {
    let bad = |m: &str| Err(ControlError::BadRequest(m.to_owned()));
    for (key, value) in body {
        let limit = |min: u64| match value {
            Value::Null => Ok(None),
            v => v.as_u64().filter(|n| *n >= min).map(Some).ok_or(()),
        };
        match key.as_str() {
            "max_rows_per_second" => match limit(1) {
                Ok(v) => s.max_rows_per_second = Some(v),
                Err(()) => return bad("max_rows_per_second: a positive integer or null"),
            },
            "max_replica_lag_ms" => match limit(0) {
                Ok(v) => s.max_replica_lag_ms = Some(v),
                Err(()) => return bad("max_replica_lag_ms: milliseconds or null"),
            },
            "max_active_sessions" => match limit(0) {
                Ok(v) => s.max_active_sessions = Some(v),
                Err(()) => return bad("max_active_sessions: a count or null"),
            },
            "max_app_p99_pct" => match limit(100) {
                Ok(v) => s.max_app_p99_pct = Some(v),
                Err(()) => return bad("max_app_p99_pct: a percentage of at least 100, or null"),
            },
            "target_chunk_ms" => match value.as_u64().filter(|n| (1..=60_000).contains(n)) {
                Some(n) => s.target_chunk = Some(Duration::from_millis(n)),
                None => return bad("target_chunk_ms: between 1 and 60000"),
            },
            other => {
                return Err(ControlError::BadRequest(format!(
                    "{other}: not a backfill setting (max_rows_per_second, target_chunk_ms, max_replica_lag_ms, max_active_sessions, max_app_p99_pct)"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tune_lifts_and_sets_limits_and_names_bad_fields() {
        let mut s = Settings::default();
        let body =
            json!({"max_rows_per_second": null, "target_chunk_ms": 40, "max_app_p99_pct": 150});
        tune(&mut s, body.as_object().unwrap()).unwrap();
        assert_eq!(s.max_rows_per_second, Some(None));
        assert_eq!(s.target_chunk, Some(Duration::from_millis(40)));
        assert_eq!(s.max_app_p99_pct, Some(Some(150)));
        for bad in [
            json!({"max_rows_per_second": 0}),
            json!({"max_app_p99_pct": 99}),
            json!({"nope": 1}),
        ] {
            let e = tune(&mut s, bad.as_object().unwrap()).unwrap_err();
            assert!(matches!(e, ControlError::BadRequest(_)), "{e}");
        }
    }
}
