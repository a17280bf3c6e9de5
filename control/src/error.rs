//! Control-plane errors, each with the HTTP status the API answers with.

use hyper::StatusCode;

/// An error of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Bad input (400), naming the field.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Unknown migration (404).
    #[error("{0}")]
    NotFound(String),
    /// A request body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Wrong phase, closed gate, or a name already taken (409).
    #[error("{0}")]
    Conflict(String),
    /// The control plane is not configured (503).
    #[error("{0}")]
    Unavailable(String),
    /// The database is unreachable or refused (503).
    #[error("database: {}", database_message(.0))]
    Database(#[from] tokio_postgres::Error),
    /// A bug or an inconsistent state (500).
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Database(_) | ControlError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The same error, for a second reader (a relayed answer, a waiter).
    pub fn duplicate(&self) -> ControlError {
        let message = self.to_string();
        match self {
            ControlError::BadRequest(_) => ControlError::BadRequest(message),
            ControlError::Unauthorized(_) => ControlError::Unauthorized(message),
            ControlError::NotFound(_) => ControlError::NotFound(message),
            ControlError::TooLarge(_) => ControlError::TooLarge(message),
            ControlError::Conflict(_) => ControlError::Conflict(message),
            ControlError::Unavailable(_) | ControlError::Database(_) => {
                ControlError::Unavailable(message)
            }
            ControlError::Internal(_) => ControlError::Internal(message),
        }
    }

    /// Whether the database connection was lost (a retry may succeed).
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Database(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("08") || c.starts_with("57P")
                    })
                    || e.as_db_error().is_none()
            }
            _ => false,
        }
    }

    /// The machine-readable code in `{"error": {"code": ...}}`.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::Unauthorized(_) => "unauthorized",
            ControlError::NotFound(_) => "not_found",
            ControlError::TooLarge(_) => "too_large",
            ControlError::Conflict(_) => "conflict",
            ControlError::Database(_) => "database_unavailable",
            ControlError::Unavailable(_) => "unavailable",
            ControlError::Internal(_) => "internal",
        }
    }
}

impl From<switchyard_rules::migration::Refusal> for ControlError {
    fn from(r: switchyard_rules::migration::Refusal) -> Self {
        ControlError::Conflict(r.to_string())
    }
}

impl From<switchyard_rules::migration::events::Moved> for ControlError {
    fn from(m: switchyard_rules::migration::events::Moved) -> Self {
        ControlError::Conflict(m.to_string())
    }
}

/// What the server said (SQLSTATE and message), not only "db error".
fn database_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
