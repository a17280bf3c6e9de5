//! DDL verbs asked of the job holder by another instance: a row in
//! `switchyard.requests` and a notification; the holder takes each request
//! once, runs it, writes the answer back and notifies the asker.

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::error::ControlError;

/// Channel on which new requests are announced.
pub(crate) const REQUESTS_CHANNEL: &str = "switchyard_requests";
/// Channel on which answers are announced (payload: the request id).
pub(crate) const ANSWERS_CHANNEL: &str = "switchyard_answers";

/// A request taken by the holder.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Its id.
    pub id: i64,
    /// The migration.
    pub migration: String,
    /// The verb, as the API spells it.
    pub verb: String,
    /// `?force=true`.
    pub force: bool,
    /// Who asked.
    pub actor: String,
}

/// Records a request and notifies the holder; returns its id.
pub(crate) async fn request(
    client: &impl GenericClient,
    migration: &str,
    verb: &str,
    force: bool,
    actor: &str,
    instance: &str,
) -> Result<i64, ControlError> {
    let row = client
        .query_one(
            "WITH r AS (INSERT INTO switchyard.requests (migration, verb, force, actor, asked_by)
                        VALUES ($1, $2, $3, $4, $5) RETURNING id)
             SELECT id, pg_notify($6, id::text) FROM r",
            &[
                &migration,
                &verb,
                &force,
                &actor,
                &instance,
                &REQUESTS_CHANNEL,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes every request nobody took yet (each exactly once).
pub(crate) async fn take_requests(
    client: &impl GenericClient,
    instance: &str,
) -> Result<Vec<Request>, ControlError> {
    let rows = client
        .query(
            "UPDATE switchyard.requests SET taken_by = $1, taken_at = now()
             WHERE id IN (SELECT id FROM switchyard.requests WHERE taken_by IS NULL
                          ORDER BY id FOR UPDATE SKIP LOCKED)
             RETURNING id, migration, verb, force, actor",
            &[&instance],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Request {
            id: r.get(0),
            migration: r.get(1),
            verb: r.get(2),
            force: r.get(3),
            actor: r.get(4),
        })
        .collect())
}

/// Writes the answer to request `id` and notifies the asker.
pub(crate) async fn answer(
    client: &impl GenericClient,
    id: i64,
    answer: &Value,
) -> Result<(), ControlError> {
    client
        .execute(
            "WITH a AS (UPDATE switchyard.requests SET answer = $2, answered_at = now()
                        WHERE id = $1 RETURNING id)
             SELECT pg_notify($3, id::text) FROM a",
            &[&id, answer, &ANSWERS_CHANNEL],
        )
        .await?;
    Ok(())
}

/// The answer to request `id`, if written.
pub(crate) async fn answer_of(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<Value>, ControlError> {
    Ok(client
        .query_opt(
            "SELECT answer FROM switchyard.requests WHERE id = $1 AND answer IS NOT NULL",
            &[&id],
        )
        .await?
        .map(|r| r.get(0)))
}
