//! Split (`full_name → first_name, last_name`) and merge (`street, city →
//! address`): every column of a group is written whichever side a
//! statement names, and reads of a legacy name after the switch come from
//! the new columns. The real-PostgreSQL check is `tests/tests/split_merge.rs`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use switchyard_rules::fixtures::people;
use switchyard_rules::{ActiveRules, Phase, Rewrite};

fn text(phase: Phase, sql: &str) -> String {
    let rules = ActiveRules::compile(people(phase.routing().unwrap())).unwrap();
    match rules.rewrite(sql, &["public".to_string()]) {
        Rewrite::Rewritten(s, _) => s,
        other => panic!("{sql}: {other:?}"),
    }
}

fn refused(phase: Phase, sql: &str) -> String {
    let rules = ActiveRules::compile(people(phase.routing().unwrap())).unwrap();
    match rules.rewrite(sql, &["public".to_string()]) {
        Rewrite::Unsupported(u) => u.reason,
        other => panic!("{sql}: {other:?}"),
    }
}

const DW: Phase = Phase::DualWrite;
const RS: Phase = Phase::ReadsSwitched;
const CT: Phase = Phase::Contracted;

#[test]
fn a_legacy_insert_fills_every_new_column() {
    assert_eq!(
        text(DW, "INSERT INTO people (id, full_name) VALUES (1, $1)"),
        "INSERT INTO people (first_name, last_name, id, full_name) VALUES ((split_part((($1)::text), ' ', 1)), (split_part((($1)::text), ' ', 2)), 1, $1)"
    );
    // A merge's other legacy column, left out, is its default (NULL).
    assert_eq!(
        text(DW, "INSERT INTO people (id, street) VALUES (1, 'Main')"),
        "INSERT INTO people (address, id, street) VALUES (((('Main')::text) || ', ' || ((NULL)::text)), 1, 'Main')"
    );
    assert_eq!(
        text(DW, "INSERT INTO people (id, street, city) VALUES (1, 'Main', 'Oslo')"),
        "INSERT INTO people (address, id, street, city) VALUES (((('Main')::text) || ', ' || (('Oslo')::text)), 1, 'Main', 'Oslo')"
    );
}

#[test]
fn a_new_insert_fills_every_legacy_column() {
    assert_eq!(
        text(DW, "INSERT INTO people (id, first_name, last_name, address) VALUES (1, 'Ada', 'L', 'Main, Oslo')"),
        "INSERT INTO people (full_name, street, city, id, first_name, last_name, address) VALUES (((('Ada')::text) || ' ' || (('L')::text)), (split_part((('Main, Oslo')::text), ', ', 1)), (split_part((('Main, Oslo')::text), ', ', 2)), 1, 'Ada', 'L', 'Main, Oslo')"
    );
}

#[test]
fn a_partial_update_takes_the_other_columns_from_the_row() {
    assert_eq!(
        text(DW, "UPDATE people SET first_name = $1 WHERE id = $2"),
        "UPDATE people SET full_name = ((($1)::text) || ' ' || (people.last_name)), first_name = $1 WHERE id = $2"
    );
    assert_eq!(
        text(RS, "UPDATE people AS p SET city = 'Bergen' WHERE id = 1"),
        "UPDATE people AS p SET address = ((p.street) || ', ' || (('Bergen')::text)), city = 'Bergen' WHERE id = 1"
    );
}

#[test]
fn reads_after_the_switch_come_from_every_new_column() {
    assert_eq!(
        text(RS, "SELECT full_name, city FROM people WHERE id = 1"),
        "SELECT (((people.first_name) || ' ' || (people.last_name))::text) AS full_name, ((split_part((people.address), ', ', 2))::text) AS city FROM people WHERE id = 1"
    );
}

#[test]
fn after_contract_legacy_writes_become_the_new_columns() {
    assert_eq!(
        text(CT, "INSERT INTO people (id, full_name, street, city) VALUES (1, 'Ada L', 'Main', 'Oslo')"),
        "INSERT INTO people (id, first_name, last_name, address) VALUES (1, (split_part((('Ada L')::text), ' ', 1)), (split_part((('Ada L')::text), ' ', 2)), ((('Main')::text) || ', ' || (('Oslo')::text)))"
    );
    assert_eq!(
        text(CT, "UPDATE people SET city = $1, full_name = $2 WHERE id = $3"),
        "UPDATE people SET address = ((((split_part((people.address), ', ', 1))::text)) || ', ' || (($1)::text)), first_name = (split_part((($2)::text), ' ', 1)), last_name = (split_part((($2)::text), ' ', 2)) WHERE id = $3"
    );
    // No column list: the legacy shape, spelled out with the new columns.
    assert_eq!(
        text(CT, "INSERT INTO people VALUES (1, 'Ada L', 'Main', 'Oslo')"),
        "INSERT INTO people (id, first_name, last_name, address) VALUES (1, (split_part((('Ada L')::text), ' ', 1)), (split_part((('Ada L')::text), ' ', 2)), ((('Main')::text) || ', ' || (('Oslo')::text)))"
    );
}

#[test]
fn what_cannot_be_rewritten_after_contract_is_refused() {
    assert!(refused(
        CT,
        "INSERT INTO people (id, full_name, first_name) VALUES (1, 'a', 'b')"
    )
    .contains("writes both"));
    assert!(
        refused(CT, "INSERT INTO people (id, full_name) SELECT 1, 'a b'")
            .contains("split or merged")
    );
    assert!(refused(CT, "UPDATE people SET (street, city) = ('a', 'b')").contains("multi-column"));
}
