//! Literal normalisation against the statement corpus the e2e tests run
//! (`tests/corpus/statements.txt`): for every statement under every
//! routing, with its literals changed at random, the cache's answer (the
//! shape's cached rewrite with the literals spliced back) is exactly the
//! cold rewrite of that text.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;
use switchyard_rules::cache::{RewriteCache, SearchPath};
use switchyard_rules::fixtures::users;
use switchyard_rules::rewrite::scan::{scan, Kind};
use switchyard_rules::{ActiveRules, Phase};

fn corpus() -> Vec<String> {
    include_str!("../../tests/corpus/statements.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.splitn(3, " | ").nth(2).map(str::to_owned))
        .collect()
}

const PHASES: [Phase; 4] = [
    Phase::DualWrite,
    Phase::Verified,
    Phase::ReadsSwitched,
    Phase::Contracted,
];

/// `sql` with each plain string or number literal replaced by the next
/// value of `values` (strings stay strings, numbers numbers).
fn vary(sql: &str, values: &[(String, u32)]) -> String {
    let s = scan(sql);
    let mut out = String::new();
    let mut at = 0;
    let mut next = values.iter().cycle();
    for t in s.tokens.iter().filter(|t| t.kind == Kind::Literal) {
        let text = &sql[t.start..t.end];
        let prefixed = t.start > 0 && sql.as_bytes()[t.start - 1].is_ascii_alphanumeric();
        let (string, number) = next.next().unwrap();
        let replacement = if text.starts_with('\'') && text.len() >= 2 && !prefixed {
            format!("'{}'", string.replace('\'', "''"))
        } else if text.as_bytes()[0].is_ascii_digit() && text.bytes().all(|b| b.is_ascii_digit()) {
            number.to_string()
        } else {
            continue;
        };
        out.push_str(&sql[at..t.start]);
        out.push_str(&replacement);
        at = t.end;
    }
    out.push_str(&sql[at..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_spliced_shape_is_the_cold_rewrite(
        values in proptest::collection::vec(("[ -~]{0,12}", 0u32..100_000), 1..8),
        phase in 0usize..4,
        bare in proptest::option::of(0usize..14),
    ) {
        // With `bare`, string literals up to that many bytes go into
        // `forward` without their cast (the values straddle the bound).
        let mut set = users(PHASES[phase].routing().unwrap());
        if let Some(bound) = bare {
            let m = &mut set.tables[0].mappings[0];
            m.forward_takes_literals = true;
            m.legacy_type = format!("character varying({bound})");
        }
        let rules = ActiveRules::compile(set).unwrap();
        let path = SearchPath::new(vec!["public".into()]);
        let cache = RewriteCache::new(10_000);
        for sql in corpus() {
            // The corpus text first (the shape's first statement), then a
            // variant that is served from the shape.
            for text in [sql.clone(), vary(&sql, &values)] {
                let cached = cache.rewrite(&rules, &text, &path);
                let cold = rules.may_rewrite(&text).then(|| rules.rewrite(&text, path.schemas()));
                prop_assert_eq!(cached.as_deref(), cold.as_ref(), "{}", text);
            }
        }
    }
}
