use switchyard_rules::fixtures::users;
use switchyard_rules::{ActiveRules, Phase, Rewrite};

fn rw(phase: Phase, sql: &str) -> Rewrite {
    let rules = ActiveRules::compile(users(phase.routing().unwrap())).unwrap();
    rules.rewrite(sql, &["public".to_string()])
}

fn text(phase: Phase, sql: &str) -> String {
    match rw(phase, sql) {
        Rewrite::Rewritten(s) => s,
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
        format!("with x as (select {NEW} AS email from users) select * from x join users on {NEW} = x.email")
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
    // An unknown FROM item could own an unqualified name; with the routed
    // table only further out, that is ambiguous and refused.
    assert!(matches!(
        rw(
            RS,
            "select id from users where exists (select 1 from orders where email = 'x')"
        ),
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
    assert!(matches!(
        rw(c, "select * from users"),
        Rewrite::Unsupported(_)
    ));
    assert!(matches!(
        rw(c, "insert into users values (1, 'x')"),
        Rewrite::Unsupported(_)
    ));
}
