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
    /// Wrong phase, closed gate, or a name already taken (409).
    #[error("{0}")]
    Conflict(String),
    /// The control plane is not configured (503).
    #[error("{0}")]
    Unavailable(String),
    /// The database is unreachable or refused (503).
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// Not built yet (501).
    #[error("{0}")]
    NotImplemented(String),
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
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Database(_) | ControlError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ControlError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            ControlError::Conflict(_) => "conflict",
            ControlError::Database(_) => "database_unavailable",
            ControlError::Unavailable(_) => "unavailable",
            ControlError::NotImplemented(_) => "not_implemented",
            ControlError::Internal(_) => "internal",
        }
    }
}
