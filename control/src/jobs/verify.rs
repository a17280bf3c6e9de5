//! The parity pass: chunked by key, each chunk one statement counting rows
//! where the new column is not forward(legacy), with sample keys.

use switchyard_rules::migration::Progress;
use tokio_postgres::Client;

use super::Target;
use crate::chunks::verify_sql;
use crate::error::ControlError;

/// A full parity pass, chunked by key, each chunk one statement.
pub(crate) async fn verify(
    client: &Client,
    t: &Target,
    mut report: impl FnMut(&Progress, bool),
) -> Result<Progress, ControlError> {
    let mut progress = Progress {
        chunk_rows: 10_000,
        ..Progress::default()
    };
    let sql = verify_sql(t);
    let mut last: Option<Vec<String>> = None;
    loop {
        let row = client
            .query_one(&sql, &[&last, &(progress.chunk_rows as i64)])
            .await?;
        let Some(max_key) = row.get::<_, Option<Vec<String>>>(0) else {
            break;
        };
        progress.rows_done += row.get::<_, i64>(1) as u64;
        progress.rows_changed += row.get::<_, i64>(2) as u64;
        if let Some(samples) = row.get::<_, Option<Vec<String>>>(3) {
            for s in samples {
                if progress.sample_keys.len() < 10 {
                    progress.sample_keys.push(s);
                }
            }
        }
        last = Some(max_key);
        report(&progress, false);
    }
    Ok(progress)
}
