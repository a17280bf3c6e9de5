//! Random sequences of operator calls against the real `serve` binary and
//! real PostgreSQL, with applications running through the proxy meanwhile,
//! checked against the pure model (`switchyard_rules::migration`).
//!
//! Each sequence has two migrations (a text column renamed and lowered,
//! NOT NULL at contract off; an int column turned into text, NOT NULL on)
//! and four application clients: for each table an old version that knows
//! only the legacy name (until `complete`), and a new version that knows
//! only the new name (reads from `expanded`, writes from `dual_write`: a
//! new-name write before writes are dual would be lost by the backfill).
//!
//! Steps: every verb (forced or not), revert of one or all, pause, resume,
//! PATCH, the same verb twice at once, and `kill -9` of serve with a
//! restart. After every step:
//! - neither client saw an SQL error;
//! - where writes are dual and a backfill completed since, every row has
//!   new = forward(legacy);
//! - the routing in force names only columns the catalog has;
//! - a verb answered 2xx left the state the pure model predicts, and one
//!   the model refuses was answered 409.
//!
//! `SWITCHYARD_MODEL_SEQUENCES` (default 6), `SWITCHYARD_MODEL_STEPS`
//! (default 30) and `SWITCHYARD_MODEL_SEED` set the run; the seed of each
//! sequence is printed, and a failure names it.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_rules::migration::{decide, events, MigrationState, Stage, SwitchedReads, Verb};
use switchyard_tests::api::Api;
use switchyard_tests::apps::{App, Mode, Workload};
use switchyard_tests::process::ServeProcess;
use switchyard_tests::Cluster;

const TOKEN: &str = "model-token";
const ROWS: i64 = 400;

/// A small deterministic generator (xorshift64*), so that a seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One migration of a sequence, with its two application versions.
struct Subject {
    name: String,
    table: String,
    legacy: String,
    new: String,
    forward: String,
    old_app: App,
    new_app: App,
}

/// What the test does next.
#[derive(Debug, Clone)]
enum Action {
    Verb { m: usize, verb: Verb, force: bool },
    Twice { m: usize, verb: Verb },
    Revert { m: Option<usize> },
    Pause { m: usize, paused: bool },
    Tune { m: usize },
    Kill,
}

const VERBS: [Verb; 8] = [
    Verb::Expand,
    Verb::DualWrite,
    Verb::Backfill,
    Verb::Verify,
    Verb::SwitchReads,
    Verb::Contract,
    Verb::Complete,
    Verb::Rollback,
];

fn pick(rng: &mut Rng, states: &[MigrationState]) -> Action {
    let m = rng.below(2) as usize;
    match rng.below(100) {
        0..=2 => Action::Kill,
        3..=8 => Action::Revert {
            m: rng.chance(50).then_some(m),
        },
        9..=11 => Action::Pause {
            m,
            paused: rng.chance(50),
        },
        12..=13 => Action::Tune { m },
        14..=18 => Action::Twice {
            m,
            verb: VERBS[rng.below(8) as usize],
        },
        19..=54 => {
            // Mostly the verb that moves forward, so sequences get far.
            let verb = next_verb(&states[m]);
            Action::Verb {
                m,
                verb,
                force: rng.chance(10),
            }
        }
        _ => Action::Verb {
            m,
            verb: VERBS[rng.below(8) as usize],
            force: rng.chance(25),
        },
    }
}

fn next_verb(s: &MigrationState) -> Verb {
    match s.stage {
        Stage::Planned => Verb::Expand,
        Stage::Expanded => Verb::DualWrite,
        Stage::DualWrite => Verb::Backfill,
        Stage::Backfilled => Verb::Verify,
        Stage::Verified => Verb::SwitchReads,
        Stage::ReadsSwitched {
            reads: SwitchedReads::Reverted,
        } => Verb::SwitchReads,
        Stage::ReadsSwitched { .. } => {
            if s.parity
                .as_ref()
                .is_some_and(|p| p.phase == switchyard_rules::Phase::ReadsSwitched)
            {
                Verb::Contract
            } else {
                Verb::Verify
            }
        }
        Stage::Contracted { .. } => Verb::Complete,
        Stage::Completed => Verb::Rollback,
    }
}

/// What the new application version may do in `stage`.
fn new_mode(stage: Stage) -> Mode {
    match stage {
        Stage::Planned => Mode::Off,
        Stage::Expanded => Mode::Read,
        _ => Mode::Write,
    }
}

/// What the old application version may do in `stage`.
fn old_mode(stage: Stage) -> Mode {
    match stage {
        Stage::Completed => Mode::Off,
        _ => Mode::Write,
    }
}

struct World {
    cluster: Cluster,
    serve: ServeProcess,
    api: Api,
    db: tokio_postgres::Client,
    kills: u64,
    steps: u64,
}

impl World {
    async fn state(&self, name: &str) -> MigrationState {
        let d = self.api.detail(name).await;
        serde_json::from_value(d["state"].clone()).unwrap_or_else(|e| panic!("{e}: {d}"))
    }

    /// Waits until no job runs (a failed job fails the test).
    async fn idle(&self, name: &str) -> MigrationState {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.state(name).await;
            if let Some(job) = &s.job {
                assert_ne!(
                    job.state,
                    switchyard_rules::migration::JobStatus::Failed,
                    "{name}: {job:?}"
                );
            }
            if s.running_job().is_none() {
                return s;
            }
            if s.settings.paused {
                // An operator waiting for the backfill resumes it.
                let (status, body) = self.api.verb(name, "resume").await;
                assert_eq!(status, 200, "{body}");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: job never ends: {:?}",
                s.job
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn columns(&self, table: &str) -> Vec<String> {
        self.db
            .query(
                "select column_name::text from information_schema.columns where table_name = $1",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

/// The stage a decided verb ends in once its job is done.
fn settled(next: Stage) -> Stage {
    match next {
        Stage::ReadsSwitched {
            reads: SwitchedReads::Restoring,
        } => Stage::ReadsSwitched {
            reads: SwitchedReads::New,
        },
        other => other,
    }
}

async fn sequence(world: &mut World, seq: u64, seed: u64, steps: u64) {
    let mut rng = Rng(seed.max(1));
    let subjects = setup(world, seq).await;
    let mut states = vec![
        world.state(&subjects[0].name).await,
        world.state(&subjects[1].name).await,
    ];
    for step in 0..steps {
        let action = pick(&mut rng, &states);
        let context = format!("sequence {seq} (seed {seed}), step {step}: {action:?}");
        if rng.chance(80) {
            for (i, s) in subjects.iter().enumerate() {
                states[i] = world.idle(&s.name).await;
            }
        } else {
            for (i, s) in subjects.iter().enumerate() {
                states[i] = world.state(&s.name).await;
            }
        }
        quiesce(&subjects, &states, &action).await;
        act(world, &subjects, &states, &action, &context).await;
        world.steps += 1;
        for (i, s) in subjects.iter().enumerate() {
            states[i] = if rng.chance(70) {
                world.idle(&s.name).await
            } else {
                world.state(&s.name).await
            };
            s.old_app.set_mode(old_mode(states[i].stage)).await;
            s.new_app.set_mode(new_mode(states[i].stage)).await;
            check(world, s, &states[i], &context).await;
        }
    }
    for (s, state) in subjects.into_iter().zip(&states) {
        let (old, lost_old) = s.old_app.counts();
        let (new, lost_new) = s.new_app.counts();
        println!(
            "  {}: {:?}; old app {old} statements ({lost_old} lost connections), new app {new} ({lost_new})",
            s.name, state.stage
        );
        s.old_app.stop().await;
        s.new_app.stop().await;
    }
}

/// Before an action, each client drops to what it may do on both sides.
async fn quiesce(subjects: &[Subject], states: &[MigrationState], action: &Action) {
    for (i, s) in subjects.iter().enumerate() {
        let stage = states[i].stage;
        let (mut old, mut new) = (old_mode(stage), new_mode(stage));
        let touches = match action {
            Action::Verb { m, .. } | Action::Twice { m, .. } => *m == i,
            _ => false,
        };
        if touches {
            // Every stage this verb (twice, for Twice) can reach.
            let mut reach = vec![stage];
            for _ in 0..2 {
                if let Some(prev) = reach.last().and_then(|s| s.previous()) {
                    reach.push(prev);
                }
            }
            reach.push(Stage::Completed);
            for r in reach {
                old = old.min(old_mode(r));
                new = new.min(new_mode(r));
            }
        }
        s.old_app.set_mode(old).await;
        s.new_app.set_mode(new).await;
    }
}

async fn act(
    world: &mut World,
    subjects: &[Subject],
    states: &[MigrationState],
    action: &Action,
    context: &str,
) {
    let api = world.api.clone();
    match action {
        Action::Verb { m, verb, force } => {
            let s = &subjects[*m];
            let path = format!(
                "{}{}",
                verb.as_str(),
                if *force { "?force=true" } else { "" }
            );
            let (status, body) = api.verb(&s.name, &path).await;
            let expected = decide(&states[*m], *verb, *force);
            let raced = states[*m].running_job().is_some();
            match (&expected, status) {
                (Ok(_), 200 | 202) | (Err(_), 409) => {}
                _ if raced => {}
                _ => panic!("{context}: model says {expected:?}, API answered {status}: {body}"),
            }
            if let (Ok(d), 200 | 202, false) = (&expected, status, raced) {
                let after = world.idle(&s.name).await;
                assert_eq!(after.stage, settled(d.next), "{context}: {body}");
            }
        }
        Action::Twice { m, verb } => {
            let s = &subjects[*m];
            let (a, b) = tokio::join!(
                api.verb(&s.name, verb.as_str()),
                api.verb(&s.name, verb.as_str())
            );
            for (status, body) in [&a, &b] {
                assert!(
                    matches!(status, 200 | 202 | 409),
                    "{context}: {status} {body}"
                );
            }
            // Two successes only if the model allows the verb twice in a row.
            if [a.0, b.0].iter().all(|s| *s == 200) && states[*m].running_job().is_none() {
                let first = decide(&states[*m], *verb, false).expect("the first succeeded");
                let after_first = events::arrive(&states[*m], first.next);
                assert!(
                    decide(&after_first, *verb, false).is_ok(),
                    "{context}: both calls succeeded: {} / {}",
                    a.1,
                    b.1
                );
            }
        }
        Action::Revert { m } => {
            let (status, body) = match m {
                Some(m) => api.verb(&subjects[*m].name, "revert").await,
                None => api.call("POST", "/v1/revert", None).await,
            };
            let targets: Vec<usize> = match m {
                Some(m) => vec![*m],
                None => vec![0, 1],
            };
            for i in targets {
                let allowed = events::revert(&states[i]);
                let after = world.state(&subjects[i].name).await;
                match (&allowed, m.is_some()) {
                    (Err(_), true) => assert_eq!(status, 409, "{context}: {body}"),
                    (Ok(Some(_)), _) => {
                        assert_eq!(status, 200, "{context}: {body}");
                        assert_eq!(
                            after.stage,
                            Stage::ReadsSwitched {
                                reads: SwitchedReads::Reverted
                            },
                            "{context}: {body}"
                        );
                    }
                    _ => assert_eq!(status, 200, "{context}: {body}"),
                }
            }
        }
        Action::Pause { m, paused } => {
            let verb = if *paused { "pause" } else { "resume" };
            let (status, body) = api.verb(&subjects[*m].name, verb).await;
            assert_eq!(status, 200, "{context}: {body}");
        }
        Action::Tune { m } => {
            let (status, body) = api
                .call(
                    "PATCH",
                    &format!("/v1/migrations/{}/backfill", subjects[*m].name),
                    Some(json!({"max_rows_per_second": null, "target_chunk_ms": 20})),
                )
                .await;
            assert_eq!(status, 200, "{context}: {body}");
        }
        Action::Kill => {
            world.serve.restart(&world.cluster, TOKEN).await.unwrap();
            world.kills += 1;
        }
    }
}

async fn check(world: &World, s: &Subject, state: &MigrationState, context: &str) {
    for app in [&s.old_app, &s.new_app] {
        let errors = app.errors();
        assert!(
            errors.is_empty(),
            "{context}: application errors: {errors:?}"
        );
    }
    let columns = world.columns(&s.table).await;
    let has = |c: &String| columns.contains(c);
    if let Some(r) = state.routing() {
        let used = switchyard_rules::migration::state::used_by(Some(r));
        assert!(
            (!used.legacy || has(&s.legacy)) && (!used.new || has(&s.new)),
            "{context}: {} routes {r:?} over columns {columns:?}",
            s.name
        );
    }
    let checked = matches!(
        state.stage,
        Stage::Backfilled
            | Stage::Verified
            | Stage::ReadsSwitched {
                reads: SwitchedReads::New | SwitchedReads::Reverted
            }
    );
    if checked && state.unrewritten_writes == 0 {
        let sql = format!(
            "select count(*) from {} where {} is distinct from ({})",
            s.table, s.new, s.forward
        );
        let off: i64 = world.db.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(
            off, 0,
            "{context}: {} rows out of step in {:?}",
            s.name, state.stage
        );
    }
}

async fn setup(world: &World, seq: u64) -> Vec<Subject> {
    let (acc, ord) = (format!("acc_{seq}"), format!("ord_{seq}"));
    world
        .db
        .batch_execute(&format!(
            "create table {acc}(id bigserial primary key, email text not null, note text);
             insert into {acc}(email, note) select 'Seed' || g || '@Example.COM', 'n' from generate_series(1, {ROWS}) g;
             create table {ord}(id bigserial primary key, status int not null, note text);
             insert into {ord}(status, note) select g % 7, 'n' from generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    let specs = [
        json!({"name": format!("acc-{seq}"), "table": acc,
               "columns": [{"legacy": "email", "new": "email_address", "type": "text",
                            "forward": "lower(email)", "backward": "email_address"}],
               "backfill": {"target_chunk_ms": 20},
               // The old app stops just before complete; the quiet window is
               // tested in tests/complete.rs.
               "complete_quiet_minutes": 0}),
        json!({"name": format!("ord-{seq}"), "table": ord,
               "columns": [{"legacy": "status", "new": "status_text", "type": "text",
                            "forward": "status::text", "backward": "status_text::int", "not_null": true}],
               "backfill": {"target_chunk_ms": 20},
               // The old app stops just before complete; the quiet window is
               // tested in tests/complete.rs.
               "complete_quiet_minutes": 0}),
    ];
    for spec in &specs {
        let (status, body) = world
            .api
            .call("POST", "/v1/migrations", Some(spec.clone()))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let conn = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=postgres sslmode=disable",
        world.serve.addr.port()
    );
    let app = |label: &str, table: &str, col: &str, value: fn(u64) -> String| {
        let cast = if col == "status" { "::int" } else { "" };
        App::spawn(
            conn.clone(),
            Workload {
                label: label.to_owned(),
                read: format!("select id, {col} from {table} where id = $1"),
                insert: format!(
                    "insert into {table}({col}, note) values ($1::text{cast}, 'app') returning id"
                ),
                update: format!("update {table} set {col} = $1::text{cast} where id = $2"),
                value,
                seeded: ROWS,
            },
        )
    };
    let subjects = vec![
        Subject {
            name: format!("acc-{seq}"),
            table: acc.clone(),
            legacy: "email".into(),
            new: "email_address".into(),
            forward: "lower(email)".into(),
            old_app: app("old app (email)", &acc, "email", |n| {
                format!("User{n}@Example.COM")
            }),
            new_app: app("new app (email_address)", &acc, "email_address", |n| {
                format!("new{n}@example.com")
            }),
        },
        Subject {
            name: format!("ord-{seq}"),
            table: ord.clone(),
            legacy: "status".into(),
            new: "status_text".into(),
            forward: "status::text".into(),
            old_app: app("old app (status)", &ord, "status", |n| (n % 50).to_string()),
            new_app: app("new app (status_text)", &ord, "status_text", |n| {
                (n % 50).to_string()
            }),
        },
    ];
    for s in &subjects {
        s.old_app.set_mode(Mode::Write).await;
    }
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sequences_never_break_an_application() {
    let sequences = env("SWITCHYARD_MODEL_SEQUENCES", 6);
    let steps = env("SWITCHYARD_MODEL_STEPS", 30);
    let seed = env(
        "SWITCHYARD_MODEL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    let cluster = Cluster::start().unwrap();
    let serve = ServeProcess::start(&cluster, TOKEN).await.unwrap();
    let db = switchyard_tests::proxy::connect(&cluster.conn_str("trust_user", "postgres"))
        .await
        .unwrap();
    let api = Api::new(serve.control_addr, TOKEN);
    let mut world = World {
        cluster,
        serve,
        api,
        db,
        kills: 0,
        steps: 0,
    };
    let started = Instant::now();
    for seq in 0..sequences {
        let seed = seed.wrapping_add(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        println!(
            "sequence {seq}: SWITCHYARD_MODEL_SEED={seed} SWITCHYARD_MODEL_SEQUENCES=1 replays it"
        );
        sequence(&mut world, seq, seed, steps).await;
    }
    println!(
        "{sequences} sequences, {} steps, {} kills of serve, in {:.0} s",
        world.steps,
        world.kills,
        started.elapsed().as_secs_f64()
    );
}
