//! The rewrite cache: ORMs repeat the same statement texts, so the steady
//! state of a routed statement is one hash lookup.
//!
//! Keyed by the statement text; an entry also records the rules version and
//! search path it was computed for, and is recomputed when either differs.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dashmap::DashMap;

use crate::active::ActiveRules;
use crate::rewrite::Rewrite;

/// A session's schema search path, with a cheap identity for cache keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    schemas: Arc<[String]>,
    id: u64,
}

impl SearchPath {
    /// A search path of these schemas, in order.
    pub fn new(schemas: Vec<String>) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        schemas.hash(&mut h);
        SearchPath {
            schemas: schemas.into(),
            id: h.finish(),
        }
    }

    /// The schemas.
    pub fn schemas(&self) -> &[String] {
        &self.schemas
    }
}

struct Entry {
    version: u64,
    path: u64,
    result: Arc<Rewrite>,
}

/// A bounded, shared cache of rewrites.
pub struct RewriteCache {
    map: DashMap<Box<str>, Entry>,
    capacity: usize,
}

impl RewriteCache {
    /// A cache holding at most `capacity` statement texts.
    pub fn new(capacity: usize) -> Self {
        RewriteCache {
            map: DashMap::new(),
            capacity,
        }
    }

    /// The rewrite of `sql`, or `None` when it cannot touch a routed table
    /// (the pre-filter's answer, which needs no cache).
    pub fn rewrite(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
    ) -> Option<Arc<Rewrite>> {
        if !rules.may_rewrite(sql) {
            return None;
        }
        if let Some(e) = self.map.get(sql) {
            if e.version == rules.version() && e.path == path.id {
                return Some(e.result.clone());
            }
        }
        let result = Arc::new(rules.rewrite(sql, path.schemas()));
        if self.map.len() >= self.capacity {
            // Crude but bounded: start over rather than track recency.
            self.map.clear();
        }
        self.map.insert(
            sql.into(),
            Entry {
                version: rules.version(),
                path: path.id,
                result: result.clone(),
            },
        );
        Some(result)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::users;
    use crate::model::Phase;

    #[test]
    fn caches_per_version_and_path() {
        let cache = RewriteCache::new(10);
        let path = SearchPath::new(vec!["public".into()]);
        let v1 = ActiveRules::compile(users(Phase::DualWrite.routing().unwrap())).unwrap();
        assert!(cache.rewrite(&v1, "select 1", &path).is_none());
        let sql = "update users set email = $1";
        let a = cache.rewrite(&v1, sql, &path).unwrap();
        let b = cache.rewrite(&v1, sql, &path).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(*a, Rewrite::Rewritten(_)));

        let mut set = users(Phase::Expanded.routing().unwrap());
        set.version = 8;
        let v2 = ActiveRules::compile(set).unwrap();
        assert!(
            cache.rewrite(&v2, sql, &path).is_none(),
            "no active rule, no parse"
        );
        let other = SearchPath::new(vec!["archive".into()]);
        assert_eq!(
            *cache.rewrite(&v1, sql, &other).unwrap(),
            Rewrite::Unchanged
        );
        assert_eq!(cache.len(), 1);
    }
}
