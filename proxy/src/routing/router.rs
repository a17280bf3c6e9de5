//! Per-session routing: rewrites statements under the session's rules
//! version, re-prepares statements that were prepared under an older one,
//! and keeps the queue of replies the server owes so that replies to
//! injected messages are swallowed without desynchronising the client.

use std::collections::VecDeque;

// Looked up on every Bind and Execute: foldhash, seeded per process.
use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use switchyard_rules::cache::{RecentShapes, SearchPath};
use switchyard_rules::{ActiveRules, ReadRoute, Rewrite, Unsupported, UnsupportedPolicy};

use super::hub::RulesHub;
use super::messages::{self, Parse};
use super::search_path::SearchPathState;
use super::session_sql::{classify_all, may_command, SessionCommand};
use crate::relay::Action;

/// A reply (or group of replies) the server owes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Parse {
        injected: Option<String>,
        /// A refused statement: the server gets text it rejects (so that
        /// it aborts the pipeline as the client expects), and its error is
        /// replaced by this ErrorResponse.
        refusal: Option<Bytes>,
    },
    Bind,
    Close {
        injected: bool,
    },
    Describe,
    Execute,
    Sync,
    Query,
    Function,
    /// A simple query of our own: every reply through its ReadyForQuery is
    /// swallowed.
    Injected,
}

/// A statement prepared with SQL `PREPARE`, as the client wrote it.
#[derive(Debug)]
struct SqlPrepared {
    text: String,
    version: u64,
    sent: String,
}

#[derive(Debug)]
struct Prepared {
    parse: Parse,
    version: u64,
    sent: String,
}

struct State {
    rules: Arc<ActiveRules>,
    /// Between transactions with nothing in flight: the server's last
    /// ReadyForQuery said idle, it owes no reply, and the client has sent
    /// nothing since that starts work. Only then may the version change.
    /// Otherwise the session is pinned to `rules`' version in the hub.
    at_rest: bool,
    pending: VecDeque<Expect>,
    statements: HashMap<String, Prepared>,
    /// In extended-protocol COPY FROM STDIN, where the server ignores Sync.
    copy_in: bool,
    path: SearchPathState,
    sql_prepared: HashMap<String, SqlPrepared>,
    /// When the client's current round trip began (its first message
    /// since the last ReadyForQuery that left nothing owed).
    busy_since: Option<Instant>,
}

/// Statements longer than this (in frame bytes) are rewritten off the
/// session's thread: parsing one may take milliseconds (about 5 KiB per
/// millisecond), and the thread serves other sessions.
pub const HEAVY: usize = 16 * 1024;

/// Text parsed (statements new to the rewrite cache) after which a session
/// lets its thread serve the others before its next frame: a few
/// milliseconds of parsing. A parse on a thread of its own (deep nesting)
/// counts as all of it, for the session's thread waited for it.
pub const PARSE_SLICE: usize = HEAVY;

/// Routing state of one session, shared by its two directions.
pub struct SessionRouter {
    hub: Arc<RulesHub>,
    /// The session prepared a statement longer than [`HEAVY`]: a flip may
    /// make any later Bind, Describe or EXECUTE re-prepare it.
    long_prepared: AtomicBool,
    /// Text parsed since [`SessionRouter::take_parsed`] last asked.
    parsed: AtomicUsize,
    pin: super::hub::Pin,
    database: String,
    user: String,
    state: Mutex<State>,
    /// The shapes this session's statements were recognised as lately
    /// (locked only while recognising, which one frame at a time does).
    recent: Mutex<RecentShapes>,
}

impl SessionRouter {
    /// Routing for a session of `user` on `database`; `search_path` is the
    /// startup setting, if any.
    pub fn new(hub: Arc<RulesHub>, user: &str, database: &str, search_path: Option<&str>) -> Self {
        let schemas = match search_path {
            Some(sp) => sp
                .split(',')
                .filter_map(|s| switchyard_rules::ident::fold(s.trim()))
                .collect(),
            None => vec!["$user".to_owned(), "public".to_owned()],
        };
        let default_path = path_for(user, schemas);
        SessionRouter {
            long_prepared: Default::default(),
            parsed: Default::default(),
            pin: hub.register(),
            state: Mutex::new(State {
                rules: hub.current(),
                at_rest: true,
                pending: VecDeque::new(),
                statements: HashMap::default(),
                copy_in: false,
                path: SearchPathState::new(default_path),
                sql_prepared: HashMap::default(),
                busy_since: None,
            }),
            recent: Mutex::default(),
            hub,
            database: database.to_owned(),
            user: user.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules version the session runs under now (the session-router
    /// fuzz target checks every Execute against it).
    pub fn version(&self) -> u64 {
        self.lock().rules.version()
    }

    /// Whether handling this client frame may rewrite a long statement
    /// (see [`HEAVY`]): its own, or one prepared earlier that a flip makes
    /// it re-prepare. Asked of every client frame, so it takes no lock.
    pub fn heavy(&self, tag: u8, frame: &[u8]) -> bool {
        let long_prepared = || self.long_prepared.load(Relaxed);
        match tag {
            // A Query may EXECUTE a long statement prepared before.
            b'Q' => frame.len() > HEAVY || long_prepared(),
            b'P' => frame.len() > HEAVY,
            b'B' | b'D' => long_prepared(),
            _ => false,
        }
    }

    /// The text parsed (in bytes, see [`PARSE_SLICE`]) since the last ask.
    /// Asked after every client frame: a load unless there was some.
    pub fn take_parsed(&self) -> usize {
        match self.parsed.load(Relaxed) {
            0 => 0,
            _ => self.parsed.swap(0, Relaxed),
        }
    }

    fn note_prepared(&self, text: &str) {
        if text.len() > HEAVY {
            self.long_prepared.store(true, Relaxed);
        }
    }

    /// Handles one frame from the client.
    pub fn on_client(&self, tag: u8, frame: &[u8]) -> Action {
        let body = &frame[5..];
        let mut st = self.lock();
        if st.busy_since.is_none() {
            st.busy_since = Some(Instant::now());
        }
        // Whatever leads a batch (Close, Sync, Execute, ... as well as
        // Parse), the batch runs under the version in force when it began.
        if starts_work(tag) {
            self.adopt(&mut st);
        }
        match tag {
            b'Q' => {
                st.pending.push_back(Expect::Query);
                // No rules for this database and no session command: nothing
                // to track or rewrite (a plain proxy's every query), so no
                // UTF-8 check, no unlocking and relocking.
                let untouched = st.rules.set.database != self.database
                    && messages::query_bytes(body).is_some_and(|q| !may_command(q));
                if untouched {
                    return Action::Forward;
                }
                let Some(sql) = messages::query_text(body) else {
                    return Action::Forward;
                };
                let commands = classify_all(sql);
                let mut inject = None;
                for command in &commands {
                    inject = self.session_command(&mut st, command).or(inject);
                }
                // The lock is not held while rewriting: a long rewrite runs
                // off the worker, and the server direction must not wait.
                let (path, rules) = (st.path.current().clone(), st.rules.clone());
                drop(st);
                let outcome = self.rewrite(&path, &rules, sql);
                let mut st = self.lock();
                // What was sent is kept only for an SQL-level PREPARE.
                let (sent, action) = match outcome {
                    Outcome::Same => (None, Action::Forward),
                    Outcome::Text(text) => {
                        let prepare = matches!(commands.as_slice(), [SessionCommand::Prepare(_)]);
                        let kept = prepare.then(|| text.clone());
                        (kept, Action::Replace(messages::query_owned(text)))
                    }
                    Outcome::Refuse(message) => {
                        let text = refusal(&message);
                        let frame = messages::query(&text);
                        (Some(text), Action::Replace(frame))
                    }
                };
                if let [SessionCommand::Prepare(name)] = commands.as_slice() {
                    if !sql.trim().trim_end_matches(';').contains(';') {
                        let sent = sent.unwrap_or_else(|| sql.to_owned());
                        let version = st.rules.version();
                        self.note_prepared(sql);
                        st.sql_prepared.insert(
                            name.clone(),
                            SqlPrepared {
                                text: sql.to_owned(),
                                version,
                                sent,
                            },
                        );
                    }
                }
                match (inject, action) {
                    (None, action) => action,
                    (Some(pre), Action::Forward) => with_prefix(Some(pre), frame),
                    (Some(pre), Action::Replace(body)) => with_prefix(Some(pre), &body),
                    (Some(_), action) => action,
                }
            }
            b'P' => {
                let Some(parse) = Parse::decode(body) else {
                    st.pending.push_back(Expect::Parse {
                        injected: None,
                        refusal: None,
                    });
                    return Action::Forward;
                };
                let mut refused = None;
                let (path, rules) = (st.path.current().clone(), st.rules.clone());
                drop(st);
                let outcome = self.rewrite(&path, &rules, &parse.query);
                let mut st = self.lock();
                let (sent, action) = match outcome {
                    Outcome::Same => (parse.query.clone(), Action::Forward),
                    Outcome::Text(text) => {
                        let frame = parse.frame_with(&text);
                        (text, Action::Replace(frame))
                    }
                    Outcome::Refuse(message) => {
                        refused = Some(refusal_frame(&message));
                        let frame = parse.frame_with(REFUSED);
                        (REFUSED.to_owned(), Action::Replace(frame))
                    }
                };
                st.pending.push_back(Expect::Parse {
                    injected: None,
                    refusal: refused,
                });
                let version = st.rules.version();
                self.note_prepared(&parse.query);
                st.statements.insert(
                    parse.name.clone(),
                    Prepared {
                        parse,
                        version,
                        sent,
                    },
                );
                action
            }
            b'B' => {
                let inject = messages::bind_statement(body).and_then(|n| self.refresh(&mut st, n));
                st.pending.push_back(Expect::Bind);
                with_prefix(inject, frame)
            }
            b'D' => {
                let inject = match messages::target(body) {
                    Some((b'S', name)) => self.refresh(&mut st, name),
                    _ => None,
                };
                st.pending.push_back(Expect::Describe);
                with_prefix(inject, frame)
            }
            b'E' => {
                st.pending.push_back(Expect::Execute);
                Action::Forward
            }
            b'C' => {
                if let Some((b'S', name)) = messages::target(body) {
                    if let Ok(name) = std::str::from_utf8(name) {
                        st.statements.remove(name);
                    }
                }
                st.pending.push_back(Expect::Close { injected: false });
                Action::Forward
            }
            b'S' => {
                if !st.copy_in {
                    st.pending.push_back(Expect::Sync);
                }
                Action::Forward
            }
            b'c' | b'f' => {
                st.copy_in = false;
                Action::Forward
            }
            b'F' => {
                st.pending.push_back(Expect::Function);
                Action::Forward
            }
            _ => Action::Forward,
        }
    }

    /// Handles one frame from the server.
    pub fn on_server(&self, tag: u8, frame: &[u8]) -> Action {
        let mut st = self.lock();
        if st.pending.front() == Some(&Expect::Injected) {
            if tag == b'Z' {
                st.pending.pop_front();
            }
            return Action::Replace(Bytes::new());
        }
        match tag {
            b'1' => {
                if let Some(Expect::Parse { injected, .. }) = st.pending.front().cloned() {
                    st.pending.pop_front();
                    if injected.is_some() {
                        return Action::Replace(Bytes::new());
                    }
                }
            }
            b'2' => pop_if(&mut st, |e| *e == Expect::Bind),
            b'3' => {
                if let Some(Expect::Close { injected }) = st.pending.front().cloned() {
                    st.pending.pop_front();
                    if injected {
                        return Action::Replace(Bytes::new());
                    }
                }
            }
            // COPY FROM STDIN started by Execute: Syncs the client sent
            // before its CopyDone are ignored by the server.
            b'G' if st.pending.front() == Some(&Expect::Execute) => {
                st.copy_in = true;
                st.pending.retain(|e| *e != Expect::Sync);
            }
            b'n' => pop_if(&mut st, |e| *e == Expect::Describe),
            b'T' => pop_if(&mut st, |e| *e == Expect::Describe),
            b'C' => {
                st.path.on_complete(frame.get(5..).unwrap_or_default());
                pop_if(&mut st, |e| *e == Expect::Execute)
            }
            b'I' | b's' => pop_if(&mut st, |e| *e == Expect::Execute),
            // In extended mode the server skips everything up to the next
            // Sync; an injected Parse skipped that way must be redone.
            b'E' if !matches!(
                st.pending.front(),
                Some(Expect::Query | Expect::Function) | None
            ) =>
            {
                // The error of a refused statement is ours.
                let ours = match st.pending.front() {
                    Some(Expect::Parse {
                        refusal: Some(frame),
                        ..
                    }) => Some(frame.clone()),
                    _ => None,
                };
                while let Some(e) = st.pending.front().cloned() {
                    if e == Expect::Sync {
                        break;
                    }
                    st.pending.pop_front();
                    if let Expect::Parse {
                        injected: Some(name),
                        ..
                    } = e
                    {
                        if let Some(p) = st.statements.get_mut(&name) {
                            p.version = 0;
                            p.sent.clear();
                        }
                    }
                }
                if let Some(frame) = ours {
                    return Action::Replace(frame);
                }
            }
            b'Z' => {
                while let Some(e) = st.pending.pop_front() {
                    if matches!(e, Expect::Sync | Expect::Query | Expect::Function) {
                        break;
                    }
                }
                let status = frame.get(5).copied().unwrap_or(b'I');
                st.path.on_ready(status);
                if status == b'I' && st.pending.is_empty() && !st.at_rest {
                    st.at_rest = true;
                    self.hub.unpin(&self.pin);
                }
                if st.pending.is_empty() {
                    if let Some(since) = st.busy_since.take() {
                        self.hub.latency.record(since.elapsed());
                    }
                }
            }
            _ => {}
        }
        Action::Forward
    }

    /// At rest, take the newest rules and pin their version for the work
    /// that starts now; otherwise keep the version the work began under.
    fn adopt(&self, st: &mut State) {
        if !st.at_rest {
            return;
        }
        let current = self.hub.current();
        if current.version() != st.rules.version() {
            st.rules = current;
        }
        st.at_rest = false;
        self.hub.pin(&self.pin, st.rules.acknowledges());
    }

    /// Re-prepares `name` if it was prepared under another rules version and
    /// its rewrite differs now; returns the Close+Parse to send first.
    fn refresh(&self, st: &mut State, name: &[u8]) -> Option<Bytes> {
        let name = std::str::from_utf8(name).ok()?;
        let version = st.rules.version();
        let rules = st.rules.clone();
        let prepared = st.statements.get(name)?;
        if prepared.version == version {
            return None;
        }
        let path = st.path.current().clone();
        let mut refused = None;
        let text = match self.rewrite(&path, &rules, &prepared.parse.query) {
            Outcome::Same => prepared.parse.query.clone(),
            Outcome::Text(t) => t,
            Outcome::Refuse(m) => {
                refused = Some(refusal_frame(&m));
                REFUSED.to_owned()
            }
        };
        let prepared = st.statements.get_mut(name)?;
        prepared.version = version;
        if text == prepared.sent {
            return None;
        }
        // Its table's migration completed: the rewritten text names only
        // columns that remain, and keeps the shape the driver knows.
        if text == prepared.parse.query && rules.retired.may_touch(&text) {
            return None;
        }
        let parse = prepared.parse.frame_with(&text);
        prepared.sent = text;
        let mut out = BytesMut::new();
        if !name.is_empty() {
            out.extend_from_slice(&messages::close_statement(name));
            st.pending.push_back(Expect::Close { injected: true });
        }
        out.extend_from_slice(&parse);
        st.pending.push_back(Expect::Parse {
            injected: Some(name.to_owned()),
            refusal: refused,
        });
        Some(out.freeze())
    }

    /// Follows `SET search_path` and SQL-level prepared statements; returns
    /// a query to run first when a statement `PREPARE`d under another rules
    /// version is about to be `EXECUTE`d and its rewrite changed.
    fn session_command(&self, st: &mut State, command: &SessionCommand) -> Option<Bytes> {
        match command {
            SessionCommand::SearchPath { schemas, local } => {
                let path = schemas.clone().map(|s| path_for(&self.user, s));
                st.path.set(path, *local);
            }
            SessionCommand::Deallocate(name) => {
                st.sql_prepared.remove(name);
            }
            SessionCommand::DropAll => {
                st.sql_prepared.clear();
                st.statements.clear();
            }
            SessionCommand::DiscardAll => {
                st.sql_prepared.clear();
                st.statements.clear();
                st.path.set(None, false);
            }
            SessionCommand::Prepare(_) => {}
            SessionCommand::Execute(name) => {
                let version = st.rules.version();
                let prepared = st.sql_prepared.get(name).filter(|p| p.version != version)?;
                let text = match self.rewrite(st.path.current(), &st.rules, &prepared.text) {
                    Outcome::Same => prepared.text.clone(),
                    Outcome::Text(t) => t,
                    Outcome::Refuse(m) => refusal(&m),
                };
                let changed = text != prepared.sent;
                let entry = st.sql_prepared.get_mut(name)?;
                entry.version = version;
                if !changed {
                    return None;
                }
                entry.sent = text.clone();
                // Our query goes first: its replies are swallowed.
                let back = st.pending.pop_back();
                st.pending.push_back(Expect::Injected);
                st.pending.extend(back);
                return Some(messages::query(&format!(
                    "DEALLOCATE {}; {}",
                    switchyard_rules::ident::quote(name),
                    text
                )));
            }
        }
        None
    }

    fn rewrite(&self, path: &SearchPath, rules: &ActiveRules, sql: &str) -> Outcome {
        if rules.set.database != self.database {
            return Outcome::Same;
        }
        let compute = |sql: &str| {
            let scanned = switchyard_rules::rewrite::scan::scan(sql);
            let rewrite =
                || switchyard_rules::rewrite::rewrite_scanned(rules, sql, &scanned, path.schemas());
            if super::offload::needed(sql, &scanned) {
                self.parsed.fetch_add(PARSE_SLICE, Relaxed);
                super::offload::run(rewrite)
            } else {
                self.parsed.fetch_add(sql.len(), Relaxed);
                rewrite()
            }
        };
        let cached = self
            .hub
            .cache
            .rewrite_recent(rules, sql, path, compute, &self.recent);
        let Some(result) = cached else {
            return Outcome::Same;
        };
        // A spliced rewrite is this statement's alone: moved, not copied.
        match result.into_rewrite() {
            Rewrite::Unchanged => Outcome::Same,
            Rewrite::Rewritten(text, legacy) => {
                if !legacy.is_empty() {
                    self.hub.note_legacy(&legacy, sql);
                }
                Outcome::Text(text)
            }
            Rewrite::Unsupported(u) => self.unsupported(rules, sql, &u),
        }
    }

    /// Before reads switch, an unrewritable write is forwarded (the table
    /// then needs another backfill pass); from then on it is refused.
    fn unsupported(&self, rules: &ActiveRules, sql: &str, u: &Unsupported) -> Outcome {
        self.hub.log_unsupported(sql, &u.reason);
        let refuse = rules.tables.iter().flat_map(|t| &t.mappings).any(|m| {
            u.migrations.contains(&m.mapping.migration)
                && m.mapping.routing.reads == ReadRoute::New
                && m.mapping.on_unsupported == UnsupportedPolicy::Refuse
        });
        if refuse {
            Outcome::Refuse(format!(
                "Switchyard cannot route this statement for migration {}: {}",
                u.migrations.join(", "),
                u.reason
            ))
        } else {
            // Only a write leaves rows out of step; an unrewritten read
            // before the switch reads the legacy column, which is right.
            if may_write(sql) {
                self.hub.note_resync(&u.migrations);
            }
            Outcome::Same
        }
    }
}

/// Whether the server answers this client message, so that it begins work
/// (Flush, Terminate and stray COPY messages do not).
fn starts_work(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
}

/// Whether a statement can write rows: a write keyword as a word, where
/// `UPDATE` and `SHARE` of a locking clause (`FOR [NO KEY] UPDATE`, `FOR
/// [KEY] SHARE`) do not count.
fn may_write(sql: &str) -> bool {
    let words: Vec<&str> = sql
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().enumerate().any(|(i, w)| {
        let locking = i > 0
            && ["for", "key"]
                .iter()
                .any(|k| words[i - 1].eq_ignore_ascii_case(k));
        !locking
            && ["insert", "update", "delete", "merge", "copy"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
    })
}

/// What a refused extended-protocol statement is parsed as: text the
/// server rejects, so that it aborts the pipeline up to Sync exactly as
/// for an error of the client's own; the error it returns is replaced.
const REFUSED: &str = "SWITCHYARD REFUSED THIS STATEMENT";

/// Our ErrorResponse for a refused statement (SQLSTATE 0A000).
fn refusal_frame(message: &str) -> Bytes {
    crate::error::error_response("ERROR", "0A000", message)
}

impl Drop for SessionRouter {
    fn drop(&mut self) {
        self.hub.release(&self.pin);
    }
}

enum Outcome {
    Same,
    Text(String),
    Refuse(String),
}

fn pop_if(st: &mut State, pred: impl Fn(&Expect) -> bool) {
    if st.pending.front().is_some_and(pred) {
        st.pending.pop_front();
    }
}

fn with_prefix(prefix: Option<Bytes>, frame: &[u8]) -> Action {
    match prefix {
        None => Action::Forward,
        Some(p) => {
            let mut out = BytesMut::with_capacity(p.len() + frame.len());
            out.extend_from_slice(&p);
            out.extend_from_slice(frame);
            Action::Replace(out.freeze())
        }
    }
}

/// A simple query that fails on the server with SQLSTATE 0A000 and
/// `message`, so that the client gets a normal error and ReadyForQuery in
/// order.
fn refusal(message: &str) -> String {
    format!(
        "DO $switchyard$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{}'; END $switchyard$",
        message.replace('\'', "''").replace("$switchyard$", "")
    )
}

/// A search path with `$user` resolved.
fn path_for(user: &str, schemas: Vec<String>) -> SearchPath {
    SearchPath::new(
        schemas
            .into_iter()
            .map(|s| if s == "$user" { user.to_owned() } else { s })
            .collect(),
    )
}
