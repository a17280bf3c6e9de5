//! Rule sets for tests and benchmarks.

use crate::model::{
    ColumnFact, ColumnMapping, Group, QualifiedName, Routing, RuleSet, TableFacts, TableRules,
    TypedColumn, UniqueKey,
};

/// `public.users(id, email varchar(320), name, status int default 0,
/// email_address varchar(320))` with `email → email_address`
/// (`lower(email)` / `email_address`) under `routing`.
pub fn users(routing: Routing) -> RuleSet {
    let col = |name: &str, ty: &str, default: Option<&str>| ColumnFact {
        name: name.into(),
        sql_type: ty.into(),
        default: default.map(Into::into),
    };
    RuleSet {
        version: 7,
        database: "app".into(),
        tables: vec![TableRules {
            facts: TableFacts {
                name: QualifiedName::new("public", "users"),
                columns: vec![
                    col("id", "integer", Some("nextval('users_id_seq'::regclass)")),
                    col("email", "character varying(320)", None),
                    col("name", "text", None),
                    col("status", "integer", Some("0")),
                    col("email_address", "character varying(320)", None),
                ],
                key: vec!["id".into()],
                unique: vec![
                    UniqueKey {
                        index: "users_pkey".into(),
                        constraint: Some("users_pkey".into()),
                        columns: vec!["id".into()],
                    },
                    UniqueKey {
                        index: "users_email_key".into(),
                        constraint: Some("users_email_key".into()),
                        columns: vec!["email".into()],
                    },
                    UniqueKey {
                        index: "users_email_address_key".into(),
                        constraint: None,
                        columns: vec!["email_address".into()],
                    },
                ],
            },
            mappings: vec![ColumnMapping {
                migration: "users-email".into(),
                legacy: "email".into(),
                legacy_type: "character varying(320)".into(),
                new: "email_address".into(),
                new_type: "character varying(320)".into(),
                forward: "lower(email)".into(),
                backward: "email_address".into(),
                routing,
                legacy_position: Some(1),
                on_unsupported: Default::default(),
                guarded: false,
                group: None,
                forward_takes_literals: false,
            }],
            views: vec![QualifiedName::new("public", "user_emails")],
        }],
        shadows: vec![QualifiedName::new("archive", "users")],
        local_base: None,
        retired: vec![],
    }
}

/// `public.people(id, full_name, street, city)` with a split `full_name →
/// first_name, last_name` and a merge `street, city → address`, both under
/// `routing` (the legacy columns dropped when writes route to new only).
pub fn people(routing: Routing) -> RuleSet {
    let col = |name: &str| ColumnFact {
        name: name.into(),
        sql_type: "text".into(),
        default: None,
    };
    let text = |name: &str| TypedColumn::new(name, "text");
    let split = Group {
        legacy: vec![text("full_name")],
        new: vec![text("first_name"), text("last_name")],
    };
    let merge = Group {
        legacy: vec![text("street"), text("city")],
        new: vec![text("address")],
    };
    let pair = |migration: &str,
                legacy: &str,
                new: &str,
                forward: &str,
                backward: &str,
                group: &Group,
                at: usize| ColumnMapping {
        migration: migration.into(),
        legacy: legacy.into(),
        legacy_type: "text".into(),
        new: new.into(),
        new_type: "text".into(),
        forward: forward.into(),
        backward: backward.into(),
        routing,
        legacy_position: Some(at),
        on_unsupported: Default::default(),
        guarded: false,
        group: Some(group.clone()),
        forward_takes_literals: false,
    };
    let backward = "first_name || ' ' || last_name";
    let forward = "street || ', ' || city";
    let mut columns = vec![
        ColumnFact {
            name: "id".into(),
            sql_type: "integer".into(),
            default: None,
        },
        col("full_name"),
        col("street"),
        col("city"),
        col("first_name"),
        col("last_name"),
        col("address"),
    ];
    if !routing.legacy_exists() {
        columns.retain(|c| !["full_name", "street", "city"].contains(&c.name.as_str()));
    }
    RuleSet {
        version: 3,
        database: "app".into(),
        tables: vec![TableRules {
            facts: TableFacts {
                name: QualifiedName::new("public", "people"),
                columns,
                key: vec!["id".into()],
                unique: vec![],
            },
            mappings: vec![
                pair(
                    "split",
                    "full_name",
                    "first_name",
                    "split_part(full_name, ' ', 1)",
                    backward,
                    &split,
                    1,
                ),
                pair(
                    "split",
                    "full_name",
                    "last_name",
                    "split_part(full_name, ' ', 2)",
                    backward,
                    &split,
                    1,
                ),
                pair(
                    "merge",
                    "street",
                    "address",
                    forward,
                    "split_part(address, ', ', 1)",
                    &merge,
                    2,
                ),
                pair(
                    "merge",
                    "city",
                    "address",
                    forward,
                    "split_part(address, ', ', 2)",
                    &merge,
                    3,
                ),
            ],
            views: vec![],
        }],
        shadows: vec![],
        local_base: None,
        retired: vec![],
    }
}
