//! The session router driven by scripted client batches, a model
//! PostgreSQL server behind it, and rules flips between messages.
//! Invariants: the client gets exactly the replies its own messages call
//! for, in order (none of the router's injected ones); no server error
//! reaches a well-formed client; every Execute runs the rewrite of its
//! statement under the rules version the session runs at that moment.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::relay::Action;
use switchyard_proxy::routing::{RulesHub, SessionRouter};
use switchyard_rules::fixtures::users;
use switchyard_rules::{ActiveRules, Phase, Rewrite, RuleSet};

const TEXTS: [&str; 3] = [
    "insert into users(email) values ($1)",
    "update users set email = $1 where id = 7",
    "select email from users where id = $1",
];
const NAMES: [&str; 3] = ["", "s1", "s2"];
const PHASES: [Phase; 4] = [
    Phase::Expanded,
    Phase::DualWrite,
    Phase::ReadsSwitched,
    Phase::Contracted,
];

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
    out.freeze()
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn frames(bytes: &[u8]) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
            as usize;
        out.push((bytes[at], Bytes::copy_from_slice(&bytes[at + 5..at + 1 + len])));
        at += 1 + len;
    }
    out
}

/// What the client expects back for one of its messages.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    Query,
}

/// A PostgreSQL server as far as the extended protocol goes.
#[derive(Default)]
struct Server {
    statements: HashMap<String, String>,
    portal: Option<String>,
    failed: bool,
    /// Texts run by Execute, in order.
    executed: Vec<String>,
}

impl Server {
    fn answer(&mut self, tag: u8, body: &[u8]) -> Vec<Bytes> {
        let mut r = body.split(|b| *b == 0);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if self.failed && tag != b'S' {
            return vec![];
        }
        match tag {
            b'P' => {
                let name = text(r.next().unwrap_or_default());
                let sql = text(r.next().unwrap_or_default());
                if sql.starts_with("SWITCHYARD REFUSED") {
                    return self.fail("42601");
                }
                if !name.is_empty() && self.statements.contains_key(&name) {
                    return self.fail("42P05");
                }
                self.statements.insert(name, sql);
                vec![frame(b'1', &[])]
            }
            b'B' => {
                let _portal = r.next();
                let name = text(r.next().unwrap_or_default());
                match self.statements.get(&name) {
                    Some(sql) => {
                        self.portal = Some(sql.clone());
                        vec![frame(b'2', &[])]
                    }
                    None => self.fail("26000"),
                }
            }
            b'D' => match body.first() {
                Some(b'S') => {
                    let name = text(&body[1..body.len().saturating_sub(1)]);
                    if self.statements.contains_key(&name) {
                        vec![frame(b't', &[0, 0]), frame(b'n', &[])]
                    } else {
                        self.fail("26000")
                    }
                }
                _ => match &self.portal {
                    Some(_) => vec![frame(b'n', &[])],
                    None => self.fail("34000"),
                },
            },
            b'E' => match self.portal.clone() {
                Some(sql) => {
                    self.executed.push(sql);
                    vec![frame(b'C', b"OK\0")]
                }
                None => self.fail("34000"),
            },
            b'C' => {
                let name = text(&body[1..body.len().saturating_sub(1)]);
                if body.first() == Some(&b'S') {
                    self.statements.remove(&name);
                }
                vec![frame(b'3', &[])]
            }
            b'S' => {
                self.failed = false;
                self.portal = None;
                vec![frame(b'Z', b"I")]
            }
            // A simple query ends the implicit transaction (the portal goes)
            // and destroys the unnamed statement.
            b'Q' => {
                self.portal = None;
                self.statements.remove("");
                vec![frame(b'C', b"OK\0"), frame(b'Z', b"I")]
            }
            _ => vec![],
        }
    }

    fn fail(&mut self, code: &str) -> Vec<Bytes> {
        self.failed = true;
        let mut body = vec![b'C'];
        body.extend_from_slice(code.as_bytes());
        body.extend_from_slice(b"\0\0");
        vec![frame(b'E', &body)]
    }
}

fuzz_target!(|data: &[u8]| {
    let hub = Arc::new(RulesHub::default());
    let mut versions: HashMap<u64, Arc<ActiveRules>> = HashMap::new();
    let mut version = 1;
    let install = |hub: &RulesHub, versions: &mut HashMap<u64, Arc<ActiveRules>>, v: u64, p: Phase| {
        let set = RuleSet {
            version: v,
            ..users(p.routing().unwrap())
        };
        versions.insert(v, Arc::new(ActiveRules::compile(set.clone()).unwrap()));
        hub.install(set).unwrap();
    };
    install(&hub, &mut versions, version, PHASES[0]);
    let router = SessionRouter::new(hub.clone(), "app", "app", Some("public"));
    let mut server = Server::default();
    // The client's own view: its statements' original texts, and the
    // replies it waits for.
    let mut prepared: HashMap<String, String> = HashMap::new();
    let mut bound: Option<String> = None;
    // The original text each Execute sent runs, in order.
    let mut executes: std::collections::VecDeque<String> = Default::default();
    let mut wants: Vec<Want> = Vec::new();
    let mut to_server: Vec<(u8, Bytes)> = Vec::new();

    for &op in data.iter().take(400) {
        let pick = (op >> 4) as usize;
        let mut send = |tag: u8, body: Vec<u8>, want: Option<Want>| {
            let f = frame(tag, &body);
            match router.on_client(tag, &f) {
                Action::Forward | Action::ForwardAndStop => to_server.push((tag, body.into())),
                Action::Replace(bytes) => to_server.extend(frames(&bytes)),
            }
            wants.extend(want);
        };
        match op & 0x0f {
            0 | 1 => {
                let (name, sql) = (NAMES[pick % 3], TEXTS[(pick / 3) % 3]);
                if !name.is_empty() && prepared.contains_key(name) {
                    continue;
                }
                let mut body = Vec::new();
                cstr(&mut body, name);
                cstr(&mut body, sql);
                body.extend_from_slice(&0i16.to_be_bytes());
                send(b'P', body, Some(Want::Parse));
                prepared.insert(name.to_owned(), sql.to_owned());
            }
            2 | 3 => {
                let name = NAMES[pick % 3];
                let Some(sql) = prepared.get(name).cloned() else { continue };
                let params = sql.matches('$').count();
                let mut body = Vec::new();
                cstr(&mut body, "");
                cstr(&mut body, name);
                body.extend_from_slice(&0i16.to_be_bytes());
                body.extend_from_slice(&(params as i16).to_be_bytes());
                for _ in 0..params {
                    body.extend_from_slice(&1i32.to_be_bytes());
                    body.push(b'7');
                }
                body.extend_from_slice(&0i16.to_be_bytes());
                send(b'B', body, Some(Want::Bind));
                bound = Some(sql);
            }
            4 => {
                let name = NAMES[pick % 3];
                if !prepared.contains_key(name) {
                    continue;
                }
                let mut body = vec![b'S'];
                cstr(&mut body, name);
                send(b'D', body, Some(Want::DescribeStatement));
            }
            5 => {
                if bound.is_none() {
                    continue;
                }
                send(b'D', vec![b'P', 0], Some(Want::DescribePortal));
            }
            6 | 7 => {
                let Some(sql) = bound.clone() else { continue };
                executes.push_back(sql);
                let mut body = Vec::new();
                cstr(&mut body, "");
                body.extend_from_slice(&0i32.to_be_bytes());
                send(b'E', body, Some(Want::Execute));
            }
            8 => {
                let name = NAMES[1 + pick % 2];
                if prepared.remove(name).is_none() {
                    continue;
                }
                let mut body = vec![b'S'];
                cstr(&mut body, name);
                send(b'C', body, Some(Want::Close));
            }
            9 | 10 => {
                send(b'S', vec![], Some(Want::Sync));
                bound = None;
            }
            11 => send(b'H', vec![], None),
            12 => {
                let mut body = Vec::new();
                cstr(&mut body, "select 1");
                send(b'Q', body, Some(Want::Query));
                bound = None;
                prepared.remove("");
            }
            13 => {
                version += 1;
                install(&hub, &mut versions, version, PHASES[pick % PHASES.len()]);
            }
            _ => {
                // The server answers everything sent so far; the client
                // reads and checks every reply.
                let current = versions[&router.version()].clone();
                for (tag, body) in to_server.drain(..) {
                    if tag == b'E' {
                        let executed_before = server.executed.len();
                        let answer = server.answer(tag, &body);
                        let original = executes.pop_front().unwrap_or_default();
                        if server.executed.len() > executed_before {
                            let ran = server.executed.last().unwrap().clone();
                            let expected = match current.rewrite(&original, &["public".into()]) {
                                Rewrite::Rewritten(t, _) => t,
                                _ => original.clone(),
                            };
                            assert!(
                                ran == expected,
                                "Execute ran {ran:?} under v{} where {original:?} is {expected:?}",
                                router.version()
                            );
                        }
                        deliver(&router, &answer, &mut wants);
                    } else {
                        let answer = server.answer(tag, &body);
                        deliver(&router, &answer, &mut wants);
                    }
                }
            }
        }
    }
});

/// Passes the server's replies through the router and checks each one the
/// client gets against what it waits for.
fn deliver(router: &SessionRouter, answer: &[Bytes], wants: &mut Vec<Want>) {
    for f in answer {
        let tag = f[0];
        let got = match router.on_server(tag, f) {
            Action::Forward | Action::ForwardAndStop => vec![(tag, f.clone())],
            Action::Replace(bytes) => frames(&bytes)
                .into_iter()
                .map(|(t, b)| (t, frame(t, &b)))
                .collect(),
        };
        for (tag, _) in got {
            assert_ne!(tag, b'E', "a server error reached a well-formed client");
            let want = if wants.is_empty() {
                panic!("the client got {:?} for nothing it sent", tag as char)
            } else {
                wants.remove(0)
            };
            let ok = matches!(
                (&want, tag),
                (Want::Parse, b'1')
                    | (Want::Bind, b'2')
                    | (Want::DescribePortal, b'n' | b'T')
                    | (Want::Execute, b'C')
                    | (Want::Close, b'3')
                    | (Want::Sync, b'Z')
                    | (Want::Query, b'C')
                    | (Want::DescribeStatement, b't')
            );
            assert!(ok, "the client waited for {want:?} and got {:?}", tag as char);
            // Multi-message replies keep waiting for their rest.
            match (&want, tag) {
                (Want::DescribeStatement, b't') => wants.insert(0, Want::DescribePortal),
                (Want::Query, b'C') => wants.insert(0, Want::Sync),
                _ => {}
            }
        }
    }
}
