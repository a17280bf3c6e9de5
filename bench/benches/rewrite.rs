//! Rewrite microbenchmarks: pre-filter miss, cache hit, cold rewrites of
//! typical ORM statements.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard_rules::cache::{RewriteCache, SearchPath};
use switchyard_rules::fixtures::users;
use switchyard_rules::{ActiveRules, Phase};

const INSERT: &str = "INSERT INTO \"users\" (\"email\", \"name\", \"status\") VALUES ($1, $2, $3) RETURNING \"users\".\"id\"";
const UPDATE: &str =
    "UPDATE \"users\" SET \"email\" = $1, \"name\" = $2 WHERE \"users\".\"id\" = $3";
const SELECT: &str = "SELECT \"users\".\"id\", \"users\".\"email\", \"users\".\"name\" FROM \"users\" WHERE \"users\".\"email\" = $1 LIMIT $2";
const MISS: &str = "SELECT \"orders\".\"id\", \"orders\".\"total\" FROM \"orders\" WHERE \"orders\".\"customer_id\" = $1 ORDER BY \"orders\".\"created_at\" DESC LIMIT 20";

fn benches(c: &mut Criterion) {
    let rules = ActiveRules::compile(users(Phase::DualWrite.routing().unwrap())).unwrap();
    let path = SearchPath::new(vec!["public".into()]);
    let cache = RewriteCache::new(1000);

    c.bench_function("prefilter_miss", |b| {
        b.iter(|| cache.rewrite(&rules, black_box(MISS), &path))
    });
    cache.rewrite(&rules, INSERT, &path);
    c.bench_function("cache_hit_insert", |b| {
        b.iter(|| cache.rewrite(&rules, black_box(INSERT), &path))
    });
    for (name, sql) in [
        ("cold_insert", INSERT),
        ("cold_update", UPDATE),
        ("cold_select", SELECT),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| rules.rewrite(black_box(sql), path.schemas()))
        });
    }
}

criterion_group!(rewrite, benches);
criterion_main!(rewrite);
