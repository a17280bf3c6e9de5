//! The session's `search_path` as PostgreSQL applies it, followed from the
//! wire so that rewrites resolve table names the way the server will:
//! `SET` and `set_config(..., false)` hold for the session once their
//! transaction commits; `SET LOCAL` and `set_config(..., true)` only until
//! the transaction ends; a rollback (or an error in an implicit
//! transaction) undoes both.

use switchyard_rules::cache::SearchPath;

/// Tracked `search_path` of one session.
#[derive(Debug, Clone)]
pub struct SearchPathState {
    default: SearchPath,
    committed: SearchPath,
    session: SearchPath,
    local: Option<SearchPath>,
    rolled_back: bool,
}

impl SearchPathState {
    /// A session starting with `default` (its startup setting).
    pub fn new(default: SearchPath) -> Self {
        SearchPathState {
            committed: default.clone(),
            session: default.clone(),
            default,
            local: None,
            rolled_back: false,
        }
    }

    /// The path statements run under now.
    pub fn current(&self) -> &SearchPath {
        self.local.as_ref().unwrap_or(&self.session)
    }

    /// `SET [LOCAL] search_path`; `None` is `DEFAULT`/`RESET`.
    pub fn set(&mut self, path: Option<SearchPath>, local: bool) {
        let path = path.unwrap_or_else(|| self.default.clone());
        if local {
            self.local = Some(path);
        } else {
            // A session-level SET also replaces an earlier SET LOCAL.
            self.local = None;
            self.session = path;
        }
    }

    /// The server reported an error.
    pub fn on_error(&mut self) {
        self.rolled_back = true;
    }

    /// A command completed with `tag` (`ROLLBACK` also ends a failed
    /// transaction's `COMMIT`).
    pub fn on_complete(&mut self, tag: &[u8]) {
        if tag.starts_with(b"ROLLBACK") {
            self.rolled_back = true;
        }
    }

    /// ReadyForQuery with transaction `status` (`I`, `T` or `E`).
    pub fn on_ready(&mut self, status: u8) {
        match status {
            b'I' => {
                if self.rolled_back {
                    self.session = self.committed.clone();
                } else {
                    self.committed = self.session.clone();
                }
                self.local = None;
                self.rolled_back = false;
            }
            // Still in a transaction: a ROLLBACK TO SAVEPOINT recovered.
            b'T' => self.rolled_back = false,
            b'E' => self.rolled_back = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> SearchPath {
        SearchPath::new(vec![s.to_owned()])
    }

    #[test]
    fn local_settings_end_with_the_transaction_and_rollback_undoes() {
        let mut p = SearchPathState::new(path("public"));
        // BEGIN; SET LOCAL app; ... COMMIT
        p.set(Some(path("app")), true);
        p.on_ready(b'T');
        assert_eq!(p.current(), &path("app"));
        p.on_complete(b"COMMIT");
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("public"));
        // BEGIN; SET app; ROLLBACK
        p.set(Some(path("app")), false);
        p.on_ready(b'T');
        p.on_complete(b"ROLLBACK");
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("public"));
        // SET app (autocommit) holds.
        p.set(Some(path("app")), false);
        p.on_complete(b"SET");
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("app"));
        // An implicit transaction that fails takes its SET with it.
        p.set(Some(path("other")), false);
        p.on_error();
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("app"));
        // RESET goes back to the startup setting.
        p.set(None, false);
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("public"));
    }

    #[test]
    fn a_failed_transaction_recovered_by_a_savepoint_keeps_its_settings() {
        let mut p = SearchPathState::new(path("public"));
        p.set(Some(path("app")), false);
        p.on_ready(b'T');
        p.on_error();
        p.on_ready(b'E');
        p.on_complete(b"ROLLBACK");
        p.on_ready(b'T');
        p.on_complete(b"COMMIT");
        p.on_ready(b'I');
        assert_eq!(p.current(), &path("app"));
    }
}
