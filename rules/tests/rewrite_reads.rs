//! The rewriter on reads under each phase's rules, text in and text out.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use switchyard_rules::fixtures::users;
use switchyard_rules::{ActiveRules, Phase, Rewrite};

fn rw(phase: Phase, sql: &str) -> Rewrite {
    let rules = ActiveRules::compile(users(phase.routing().unwrap())).unwrap();
    rules.rewrite(sql, &["public".to_string()])
}

fn text(phase: Phase, sql: &str) -> String {
    match rw(phase, sql) {
        Rewrite::Rewritten(s, _) => s,
        other => panic!("{sql}: {other:?}"),
    }
}

const RS: Phase = Phase::ReadsSwitched;
const NEW: &str = "(((users.email_address))::character varying(320))";

#[test]
fn projection_keeps_the_output_name() {
    assert_eq!(
        text(RS, "select id, email from users where id = $1"),
        format!("select id, {NEW} AS email from users where id = $1")
    );
    assert_eq!(
        text(RS, "SELECT u.email AS e FROM public.users u WHERE u.email = $1"),
        "SELECT (((u.email_address))::character varying(320)) AS e FROM public.users u WHERE (((u.email_address))::character varying(320)) = $1"
    );
}

#[test]
fn every_clause_and_nested_queries() {
    assert_eq!(
        text(RS, "select count(*) from users where lower(email) like $1 group by email having max(email) > 'a' order by email"),
        format!("select count(*) from users where lower({NEW}) like $1 group by {NEW} having max({NEW}) > 'a' order by {NEW}")
    );
    assert_eq!(
        text(
            RS,
            "select o.id from orders o where o.user_id in (select id from users where email = $1)"
        ),
        format!(
            "select o.id from orders o where o.user_id in (select id from users where {NEW} = $1)"
        )
    );
    assert_eq!(
        text(RS, "with x as (select email from users) select * from x join users on users.email = x.email"),
        format!("with x as (select {NEW} AS email from users) select x.*, users.id, {NEW} AS email, users.name, users.status from x join users on {NEW} = x.email")
    );
}

#[test]
fn other_tables_columns_are_untouched() {
    assert_eq!(
        rw(
            RS,
            "select o.email from orders o join users u on u.id = o.user_id"
        ),
        Rewrite::Unchanged
    );
    assert_eq!(
        rw(Phase::DualWrite, "select email from users"),
        Rewrite::Unchanged
    );
    // An unknown FROM item could own an unqualified name, with the routed
    // table further out: left as written while the legacy column exists
    // (it is dual-written), refused once it is dropped.
    let ambiguous = "select id from users where exists (select 1 from orders where email = 'x')";
    assert_eq!(rw(RS, ambiguous), Rewrite::Unchanged);
    assert!(matches!(
        rw(Phase::Contracted, ambiguous),
        Rewrite::Unsupported(_)
    ));
}

#[test]
fn returning_and_dml_reads() {
    assert_eq!(
        text(RS, "delete from users where email = $1 returning email"),
        format!("delete from users where {NEW} = $1 returning {NEW} AS email")
    );
}

#[test]
fn contracted_writes_go_to_the_new_column() {
    let c = Phase::Contracted;
    assert_eq!(
        text(c, "insert into users(email, name) values ($1, 'n') returning id"),
        "insert into users(email_address, name) values ((lower((($1)::character varying(320)))), 'n') returning id"
    );
    assert_eq!(
        text(c, "update users set email = upper(email) where id = $1"),
        format!("update users set email_address = (lower(((upper({NEW}))::character varying(320)))) where id = $1")
    );
    assert_eq!(
        text(c, "select * from users where id = 1"),
        format!(
            "select users.id, {NEW} AS email, users.name, users.status from users where id = 1"
        )
    );
    assert_eq!(
        text(c, "select u.* from users u"),
        "select u.id, (((u.email_address))::character varying(320)) AS email, u.name, u.status from users u"
    );
    // PostgreSQL ignores an alias after `t.*` (found by fuzzing).
    assert_eq!(
        text(c, "select u.*Welete, u.* AS w from users u"),
        "select u.id, (((u.email_address))::character varying(320)) AS email, u.name, u.status, u.id, (((u.email_address))::character varying(320)) AS email, u.name, u.status from users u"
    );
    assert_eq!(
        text(c, "select * from users join orders o on true"),
        format!("select users.id, {NEW} AS email, users.name, users.status, o.* from users join orders o on true")
    );
    assert!(matches!(
        rw(c, "select * from users join orders using (id)"),
        Rewrite::Unsupported(_)
    ));
    assert_eq!(
        text(c, "insert into users values (1, 'x')"),
        "insert into users (id, email_address) values (1, (lower((('x')::character varying(320)))))"
    );
    assert_eq!(
        text(c, "insert into users(email) values (DEFAULT)"),
        "insert into users(email_address) values ((lower(((NULL)::character varying(320)))))"
    );
}

#[test]
fn column_less_insert_after_contract_uses_the_legacy_shape() {
    let mut set = users(Phase::Contracted.routing().unwrap());
    set.tables[0].facts.columns.remove(1);
    let rules = ActiveRules::compile(set).unwrap();
    assert_eq!(
        rules.rewrite("insert into users values (default, 'Max@X', 'max')", &["public".to_string()]),
        Rewrite::Rewritten(
            "insert into users (id, email_address, name) values (default, (lower((('Max@X')::character varying(320)))), 'max')".into(),
            vec!["users-email".to_string()].into()
        )
    );
}

#[test]
fn merge_reads_and_writes_follow_the_routing() {
    // Reads switched: the join condition reads the new column, and the
    // write still sets both.
    assert_eq!(
        text(
            RS,
            "merge into users u using src s on u.email = s.email when matched then update set name = s.name"
        ),
        "merge into users u using src s on (((u.email_address))::character varying(320)) = s.email when matched then update set name = s.name"
    );
    // Contracted: the legacy name is written through forward.
    assert_eq!(
        text(
            Phase::Contracted,
            "merge into users u using src s on u.id = s.id when matched and u.email <> s.email then update set email = s.email when not matched then insert (id, email) values (s.id, s.email)"
        ),
        "merge into users u using src s on u.id = s.id when matched and (((u.email_address))::character varying(320)) <> s.email then update set email_address = (lower(((s.email)::character varying(320)))) when not matched then insert (id, email_address) values (s.id, (lower(((s.email)::character varying(320)))))"
    );
}

#[test]
fn a_column_less_insert_into_a_contracted_table_redirects_its_on_conflict_set() {
    assert_eq!(
        text(
            Phase::Contracted,
            "insert into users values (1, 'A@x', 'n', 0) on conflict (id) do update set email = excluded.email"
        ),
        "insert into users (id, email_address, name, status) values (1, (lower((('A@x')::character varying(320)))), 'n', 0) on conflict (id) do update set email_address = (lower((((((excluded.email_address))::character varying(320)))::character varying(320))))"
    );
}

/// Issue 14 B: `*` follows the read switch, not the contract.
#[test]
fn star_is_served_from_the_new_column_once_reads_switch() {
    assert_eq!(
        text(RS, "select * from users where id = $1"),
        format!(
            "select users.id, {NEW} AS email, users.name, users.status from users where id = $1"
        )
    );
    assert_eq!(
        text(RS, "update users set name = $1 where id = $2 returning users.*"),
        format!("update users set name = $1 where id = $2 returning users.id, {NEW} AS email, users.name, users.status")
    );
    // Reads on the legacy column: `*` keeps the original shape all the same.
    assert_eq!(
        text(Phase::Verified, "select * from users"),
        "select users.id, users.email, users.name, users.status from users"
    );
}

/// Issue 14 C: INSERT ... RETURNING * is over the target alone.
#[test]
fn insert_returning_star_is_not_a_join() {
    for phase in [RS, Phase::Contracted] {
        let out = text(phase, "insert into users(name) values ($1) returning *");
        assert!(
            out.ends_with(&format!(
                "returning users.id, {NEW} AS email, users.name, users.status"
            )),
            "{out}"
        );
    }
}

/// Issue 14 D: cursors read like their query.
#[test]
fn declare_cursor_for_select_is_routed() {
    assert_eq!(
        text(RS, "DECLARE c1 NO SCROLL CURSOR WITH HOLD FOR SELECT id, email FROM users WHERE email > $1 ORDER BY email"),
        format!("DECLARE c1 NO SCROLL CURSOR WITH HOLD FOR SELECT id, {NEW} AS email FROM users WHERE {NEW} > $1 ORDER BY {NEW}")
    );
}

/// Issue 14 E: COPY out of a query or of the table's columns.
#[test]
fn copy_out_follows_the_read_routing() {
    assert_eq!(
        text(RS, "COPY (SELECT id, email FROM users) TO STDOUT"),
        format!("COPY (SELECT id, {NEW} AS email FROM users) TO STDOUT")
    );
    assert_eq!(
        text(RS, "COPY users (id, email) TO STDOUT WITH (FORMAT binary)"),
        format!("COPY (SELECT users.id, {NEW} AS email FROM users) TO STDOUT WITH (FORMAT binary)")
    );
    assert_eq!(
        text(Phase::Contracted, "copy public.users to stdout"),
        format!("copy (SELECT users.id, {NEW} AS email, users.name, users.status FROM public.users) to stdout")
    );
    assert_eq!(
        rw(Phase::Verified, "COPY users (id, email) TO STDOUT"),
        Rewrite::Unchanged
    );
}

/// Issue 14 F: EXCLUDED holds the value as written while the legacy column
/// exists; after contract it is served from the new column.
#[test]
fn excluded_keeps_the_written_legacy_value_until_contract() {
    let out = text(
        RS,
        "insert into users(id, email) values ($1, $2) on conflict (id) do update set email = excluded.email",
    );
    assert!(out.ends_with("set email_address = (lower(((excluded.email)::character varying(320)))), email = excluded.email"), "{out}");
    let out = text(
        Phase::Contracted,
        "insert into users(id, email) values ($1, $2) on conflict (id) do update set email = excluded.email",
    );
    assert!(
        out.contains("(((excluded.email_address))::character varying(320))"),
        "{out}"
    );
}

/// Issue 14: FOR NO KEY UPDATE / FOR KEY SHARE are reads, routed like any.
#[test]
fn no_key_locking_clauses_are_reads() {
    assert_eq!(
        text(
            RS,
            "SELECT id, email FROM users WHERE id = $1 FOR NO KEY UPDATE"
        ),
        format!("SELECT id, {NEW} AS email FROM users WHERE id = $1 FOR NO KEY UPDATE")
    );
    assert_eq!(
        text(
            RS,
            "select email from users where id = 1 for key share of users nowait"
        ),
        format!("select {NEW} AS email from users where id = 1 for key share of users nowait")
    );
    assert_eq!(
        rw(
            Phase::DualWrite,
            "select email from users where id = 1 for no key update"
        ),
        Rewrite::Unchanged
    );
}

/// Issue 14 (node-postgres): while a pair routes nothing yet, `*` is
/// spelled out without the new column, so that expand adding it (or a
/// rollback dropping it) never changes what a prepared `*` returns.
#[test]
fn star_keeps_its_shape_while_the_new_column_comes_and_goes() {
    for phase in [Phase::Planned, Phase::Expanded] {
        assert_eq!(
            text(phase, "select * from users where id = $1"),
            "select users.id, users.email, users.name, users.status from users where id = $1",
            "{phase:?}"
        );
    }
    // Only `*` is looked at: other statements on the table are untouched.
    assert_eq!(
        rw(Phase::Expanded, "update users set email = $1 where id = $2"),
        Rewrite::Unchanged
    );
    assert_eq!(
        text(Phase::DualWrite, "select * from users"),
        "select users.id, users.email, users.name, users.status from users"
    );
}
