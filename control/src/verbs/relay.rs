//! DDL verbs asked of another instance: recorded in `switchyard.requests`
//! with a notification; the job holder takes each request once, runs it and
//! writes the answer back with a notification of its own. The asker waits
//! for that answer (event-driven, no polling) and answers 202 if it takes
//! longer than [`RELAY_WAIT`]; the migration's detail follows the job.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_rules::migration::Verb;
use tracing::warn;

use super::accepted;
use crate::engine::Engine;
use crate::error::ControlError;
use crate::store;

/// How long an instance waits for the holder's answer before answering 202.
const RELAY_WAIT: Duration = Duration::from_secs(3);

impl Engine {
    /// Hands a DDL verb to the holder and waits a little for its answer.
    pub(super) async fn relay(
        self: &Arc<Self>,
        name: &str,
        verb: Verb,
        force: bool,
        actor: &str,
    ) -> Result<Value, ControlError> {
        let mut answers = self.fleet.answers.subscribe();
        let id = {
            let client = self.db.session().await?;
            store::get(&*client, name).await?;
            let me = &self.fleet.instance.id;
            store::request(&*client, name, verb.as_str(), force, actor, me).await?
        };
        let answered = tokio::time::timeout(RELAY_WAIT, async {
            loop {
                match answers.recv().await {
                    Ok(n) if n == id => return,
                    Ok(_) => {}
                    // Missed some: look at the table below.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .await;
        let answer = {
            let client = self.db.session().await?;
            store::answer_of(&*client, id).await?
        };
        match (answered, answer) {
            (_, Some(answer)) => decode(&answer),
            // The holder has not answered yet: the request stays recorded,
            // and the detail follows it.
            (_, None) => accepted(self.detail(name).await?),
        }
    }

    /// On the holder: runs the DDL verbs other instances recorded.
    pub(crate) async fn take_requests(self: &Arc<Self>) -> Result<(), ControlError> {
        let taken = {
            let client = self.db.session().await?;
            store::take_requests(&*client, &self.fleet.instance.id).await?
        };
        for request in taken {
            let engine = self.clone();
            tokio::spawn(async move {
                let result = match Verb::parse(&request.verb) {
                    Some(verb) => {
                        engine
                            .apply(&request.migration, verb, request.force, &request.actor)
                            .await
                    }
                    None => Err(ControlError::BadRequest(format!(
                        "no verb {}",
                        request.verb
                    ))),
                };
                let answer = encode(result);
                let written = match engine.db.session().await {
                    Ok(client) => store::answer(&*client, request.id, &answer).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    warn!(migration = %request.migration, error = %e, "cannot record a DDL answer");
                }
            });
        }
        Ok(())
    }
}

/// An answer as the holder records it for the instance that asked.
fn encode(result: Result<Value, ControlError>) -> Value {
    match result {
        Ok(body) => json!({ "ok": body }),
        Err(e) => json!({"status": e.status().as_u16(), "message": e.to_string()}),
    }
}

/// The error or body an answer stands for.
fn decode(answer: &Value) -> Result<Value, ControlError> {
    if let Some(body) = answer.get("ok") {
        return Ok(body.clone());
    }
    let message = answer["message"].as_str().unwrap_or_default().to_owned();
    Err(match answer["status"].as_u64() {
        Some(400) => ControlError::BadRequest(message),
        Some(404) => ControlError::NotFound(message),
        Some(409) => ControlError::Conflict(message),
        Some(503) => ControlError::Unavailable(message),
        _ => ControlError::Internal(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_keep_their_status() {
        let conflict = decode(&encode(Err(ControlError::Conflict("gate".into())))).unwrap_err();
        assert!(matches!(conflict, ControlError::Conflict(m) if m == "gate"));
        let body = json!({"phase": "expanded", "accepted": true});
        assert_eq!(decode(&encode(Ok(body.clone()))).unwrap(), body);
    }
}
