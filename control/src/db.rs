//! Sessions to the target database: one shared session for the API and
//! small state changes (reconnected after a restart), and dedicated ones for
//! DDL and long jobs, so that neither waits behind the other.

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use crate::error::ControlError;

/// The control plane's database.
pub(crate) struct Db {
    url: String,
    shared: Mutex<Client>,
}

impl Db {
    /// Connects the shared session.
    pub(crate) async fn connect(url: &str) -> Result<Self, ControlError> {
        Ok(Db {
            url: url.to_owned(),
            shared: Mutex::new(connect(url).await?),
        })
    }

    /// The shared session, reconnected if the database restarted.
    pub(crate) async fn session(&self) -> Result<MutexGuard<'_, Client>, ControlError> {
        let mut client = self.shared.lock().await;
        if client.is_closed() {
            *client = connect(&self.url).await?;
            info!("control session reconnected");
        }
        Ok(client)
    }

    /// A dedicated session (DDL, a job).
    pub(crate) async fn dedicated(&self) -> Result<Client, ControlError> {
        connect(&self.url).await
    }

    /// The connection string.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// Connects a client and drives its connection in the background.
pub(crate) async fn connect(url: &str) -> Result<Client, ControlError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "control database connection closed");
        }
    });
    Ok(client)
}
