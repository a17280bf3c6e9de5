//! Rule sets for tests and benchmarks.

use crate::model::{
    ColumnFact, ColumnMapping, QualifiedName, Routing, RuleSet, TableFacts, TableRules, UniqueKey,
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
            }],
            views: vec![QualifiedName::new("public", "user_emails")],
        }],
        shadows: vec![QualifiedName::new("archive", "users")],
        local_base: None,
        retired: vec![],
    }
}
