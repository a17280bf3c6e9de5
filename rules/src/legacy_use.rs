//! Statements that still depend on a migration's legacy side, as one proxy
//! instance saw them: published with its heartbeat, shown in the detail,
//! `ctl status` and `/metrics`, and checked by `complete`, which waits
//! until no live instance has seen one for `complete_quiet_minutes`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

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
        self.refill(sql);
    }

    /// `sql` as the statement kept.
    fn refill(&mut self, sql: &str) {
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

/// Sightings for one migration as the wire path records them: on every
/// statement that names a legacy column, so without a clock read or a
/// lock held by anyone else. When they happened is taken by whoever reads
/// them ([`Sightings::snapshot`], at each heartbeat): a reader that finds
/// the count moved dates the last sighting to its own reading, at most one
/// reading late and never early, which is what `complete`'s quiet window
/// needs.
#[derive(Debug)]
pub struct Sightings {
    count: AtomicU64,
    /// The count the last reader saw.
    read: AtomicU64,
    last_seen_unix_ms: AtomicI64,
    /// A recent statement (the last one, unless a sighting came while
    /// another was recording its text).
    statement: Mutex<LegacyUse>,
}

impl Sightings {
    /// A first sighting of `sql`.
    pub fn first(sql: &str) -> Self {
        let now = now_unix_ms();
        Sightings {
            count: AtomicU64::new(1),
            read: AtomicU64::new(0),
            last_seen_unix_ms: AtomicI64::new(now),
            statement: Mutex::new(LegacyUse {
                count: 1,
                last_seen_unix_ms: now,
                statement: truncate(sql),
            }),
        }
    }

    /// Another sighting of `sql`.
    pub fn again(&self, sql: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.statement.try_lock() {
            recent.refill(sql);
        }
    }

    /// The record as of now.
    pub fn snapshot(&self) -> LegacyUse {
        let count = self.count.load(Ordering::Relaxed);
        if self.read.swap(count, Ordering::Relaxed) != count {
            self.last_seen_unix_ms
                .fetch_max(now_unix_ms(), Ordering::Relaxed);
        }
        let statement = match self.statement.lock() {
            Ok(recent) => recent.statement.clone(),
            Err(poisoned) => poisoned.into_inner().statement.clone(),
        };
        LegacyUse {
            count,
            last_seen_unix_ms: self.last_seen_unix_ms.load(Ordering::Relaxed),
            statement,
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

    #[test]
    fn a_reader_dates_sightings_it_had_not_seen_never_earlier() {
        let s = Sightings::first("select email from users");
        let first = s.snapshot();
        assert_eq!(first.count, 1);
        s.again("select email from users where id = 2");
        let before = now_unix_ms();
        let second = s.snapshot();
        assert_eq!(second.count, 2);
        assert_eq!(second.statement, "select email from users where id = 2");
        assert!(second.last_seen_unix_ms >= before);
        // Nothing new: the date stays.
        assert_eq!(s.snapshot().last_seen_unix_ms, second.last_seen_unix_ms);
        // The text kept is the last seen (what `complete`'s refusal quotes
        // as the last).
        s.again("select email from users where id = 3");
        s.again("select email from users where id = 4");
        assert_eq!(
            s.snapshot().statement,
            "select email from users where id = 4"
        );
    }
}
