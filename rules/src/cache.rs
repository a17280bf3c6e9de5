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

/// A bounded, shared cache of rewrites: at most `capacity` texts and
/// [`RewriteCache::MAX_BYTES`] of them, and no text longer than
/// [`RewriteCache::MAX_STATEMENT`] (one that large is rarely repeated, and
/// one is enough to fill the memory a count bound would allow).
pub struct RewriteCache {
    map: DashMap<Box<str>, Entry>,
    capacity: usize,
    bytes: std::sync::atomic::AtomicUsize,
}

impl RewriteCache {
    /// Statement texts longer than this are rewritten every time.
    pub const MAX_STATEMENT: usize = 64 * 1024;
    /// Text (statements and their rewrites) held at most.
    pub const MAX_BYTES: usize = 64 * 1024 * 1024;

    /// A cache holding at most `capacity` statement texts.
    pub fn new(capacity: usize) -> Self {
        RewriteCache {
            map: DashMap::new(),
            capacity,
            bytes: Default::default(),
        }
    }

    /// The rewrite of `sql`, or `None` when it cannot touch a routed table
    /// (the pre-filter's answer, which needs no cache). `compute` runs on
    /// a miss (the caller chooses the thread it runs on).
    pub fn rewrite_with(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
        compute: impl FnOnce() -> Rewrite,
    ) -> Option<Arc<Rewrite>> {
        if !rules.may_rewrite(sql) {
            return None;
        }
        if let Some(e) = self.map.get(sql) {
            if e.version == rules.version() && e.path == path.id {
                return Some(e.result.clone());
            }
        }
        let result = Arc::new(compute());
        if sql.len() > Self::MAX_STATEMENT {
            return Some(result);
        }
        let size = sql.len()
            + match &*result {
                Rewrite::Rewritten(t, _) => t.len(),
                _ => 0,
            };
        use std::sync::atomic::Ordering::Relaxed;
        if self.map.len() >= self.capacity || self.bytes.load(Relaxed) + size > Self::MAX_BYTES {
            // Crude but bounded: start over rather than track recency.
            self.map.clear();
            self.bytes.store(0, Relaxed);
        }
        self.bytes.fetch_add(size, Relaxed);
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

    /// [`RewriteCache::rewrite_with`], computing on this thread.
    pub fn rewrite(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
    ) -> Option<Arc<Rewrite>> {
        self.rewrite_with(rules, sql, path, || rules.rewrite(sql, path.schemas()))
    }

    /// Text held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
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
        assert!(matches!(*a, Rewrite::Rewritten(..)));

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
