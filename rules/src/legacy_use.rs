//! Statements that still depend on a migration's legacy side, as one proxy
//! instance saw them: published with its heartbeat, shown in the detail,
//! `ctl status` and `/metrics`, and checked by `complete`, which waits
//! until no live instance has seen one for `complete_quiet_minutes`.

use serde::{Deserialize, Serialize};

/// The longest statement text kept (in characters).
pub const STATEMENT_CHARS: usize = 200;

/// One instance's record for one migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyUse {
    /// Statements seen since the instance started.
    pub count: u64,
    /// When the last one was seen (Unix milliseconds).
    pub last_seen_unix_ms: i64,
    /// Its text, truncated to [`STATEMENT_CHARS`].
    pub statement: String,
}

impl LegacyUse {
    /// A first sighting of `sql` now.
    pub fn first(sql: &str) -> Self {
        LegacyUse {
            count: 1,
            last_seen_unix_ms: now_unix_ms(),
            statement: truncate(sql),
        }
    }

    /// Another sighting of `sql` now.
    pub fn again(&mut self, sql: &str) {
        self.count += 1;
        self.last_seen_unix_ms = now_unix_ms();
        let (prefix, cut) = prefix(sql);
        let same = match cut {
            true => self.statement.strip_suffix('…') == Some(prefix),
            false => self.statement == prefix,
        };
        if !same {
            // Texts with inline literals differ every time: refill the
            // buffer rather than allocate another.
            self.statement.clear();
            self.statement.push_str(prefix);
            if cut {
                self.statement.push('…');
            }
        }
    }
}

/// The time now in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The first [`STATEMENT_CHARS`] characters, and whether that cut some.
fn prefix(sql: &str) -> (&str, bool) {
    // No more bytes than the limit: no more characters either (the common
    // case, on every statement that names a legacy column).
    if sql.len() <= STATEMENT_CHARS {
        return (sql, false);
    }
    match sql.char_indices().nth(STATEMENT_CHARS) {
        Some((at, _)) => (&sql[..at], true),
        None => (sql, false),
    }
}

fn truncate(sql: &str) -> String {
    match prefix(sql) {
        (p, true) => format!("{p}…"),
        (p, false) => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_short_text_and_truncates_on_a_char_boundary() {
        let mut u = LegacyUse::first("select email from users");
        u.again("select email from users");
        assert_eq!(u.count, 2);
        assert_eq!(u.statement, "select email from users");
        let long = "é".repeat(300);
        u.again(&long);
        assert_eq!(u.statement.chars().count(), STATEMENT_CHARS + 1);
        assert!(u.statement.ends_with('…'));
    }
}
