//! The rewrite cache: ORMs repeat the same statement texts, so the steady
//! state of a routed statement is one hash lookup.
//!
//! Keyed by the statement text; an entry also records the rules version and
//! search path it was computed for, and is recomputed when either differs.
//! A text with inline literals is cached by its shape instead (see
//! [`crate::normalize`]): a shape's first statement is rewritten both ways
//! and the shape is trusted only if splicing its literals into the shape's
//! rewrite gives exactly the statement's own rewrite; later statements of
//! that shape are spliced, never parsed.

use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::active::ActiveRules;
use crate::known_shape::{lead, KnownShape};
use crate::normalize::{Normalized, Spliceable};
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

/// A shape's rewrite, cut at its literals. A refusal is not kept: its
/// reason may quote a parser position, which moves with the literals'
/// lengths (found by fuzzing); such statements are rewritten each time.
enum Shaped {
    Unchanged,
    Rewritten(Spliceable, Arc<[String]>),
}

impl Shaped {
    fn of(rewrite: &Rewrite, literals: usize) -> Option<Self> {
        Some(match rewrite {
            Rewrite::Unchanged => Shaped::Unchanged,
            Rewrite::Rewritten(text, legacy) => {
                Shaped::Rewritten(Spliceable::compile(text, literals)?, legacy.clone())
            }
            Rewrite::Unsupported(_) => return None,
        })
    }

    fn fill(&self, literals: &[Range<usize>], sql: &str) -> Rewrite {
        match self {
            Shaped::Unchanged => Rewrite::Unchanged,
            Shaped::Rewritten(text, legacy) => {
                Rewrite::Rewritten(text.fill(literals, sql), legacy.clone())
            }
        }
    }
}

struct Entry {
    version: u64,
    path: u64,
    kind: EntryKind,
}

enum EntryKind {
    /// The rewrite of this very text.
    Text(Arc<Rewrite>),
    /// The rewrite of a shape, into which a statement's literals splice.
    Shape(Arc<Shaped>),
    /// A shape whose splice did not match a cold rewrite: rewrite each
    /// statement of it (and cache none).
    Cold,
}

/// A rewrite from the cache: shared when the text itself is cached, the
/// statement's own when spliced from its shape (no shared copy to make).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The rewrite of this very text, as cached.
    Shared(Arc<Rewrite>),
    /// Made for this statement.
    Own(Rewrite),
}

impl Cached {
    /// The rewrite, moved out when it is this statement's own.
    pub fn into_rewrite(self) -> Rewrite {
        match self {
            Cached::Shared(r) => Arc::unwrap_or_clone(r),
            Cached::Own(r) => r,
        }
    }
}

impl std::ops::Deref for Cached {
    type Target = Rewrite;

    fn deref(&self) -> &Rewrite {
        match self {
            Cached::Shared(r) => r,
            Cached::Own(r) => r,
        }
    }
}

/// A shape recognised by walking (see [`crate::known_shape`]), with its
/// cached rewrite.
struct Known {
    version: u64,
    path: u64,
    shape: KnownShape,
    rewrite: Arc<Shaped>,
}

/// The shapes one session recognised last, most recent first: tried
/// before the shared map, they cost no lead, no hash and no lock. A
/// session's statements come in a few shapes, over and over.
#[derive(Default)]
pub struct RecentShapes(Vec<Arc<Known>>);

/// Shapes a session keeps in its [`RecentShapes`].
const RECENT_SHAPES: usize = 4;

impl RecentShapes {
    /// Puts `known` first.
    fn note(&mut self, known: Arc<Known>) {
        self.0.retain(|k| !Arc::ptr_eq(k, &known));
        self.0.insert(0, known);
        self.0.truncate(RECENT_SHAPES);
    }
}

/// Shapes kept per lead: texts with one lead (`... WHERE id = `) may come
/// in a few shapes.
const SHAPES_PER_LEAD: usize = 4;

/// Literals of a recognised text held on the stack; more are allocated.
const INLINE_LITERALS: usize = 16;

/// A bounded, shared cache of rewrites: at most `capacity` texts and
/// [`RewriteCache::MAX_BYTES`] of them, and no text longer than
/// [`RewriteCache::MAX_STATEMENT`] (one that large is rarely repeated, and
/// one is enough to fill the memory a count bound would allow).
pub struct RewriteCache {
    /// foldhash: seeded per process like SipHash (colliding texts cannot
    /// be prepared in advance), at a fraction of its cost per byte.
    map: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// Trusted shapes by their texts' lead, newest last.
    known: DashMap<Box<[u8]>, Vec<Arc<Known>>, foldhash::fast::RandomState>,
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
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            known: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            capacity,
            bytes: Default::default(),
        }
    }

    /// The rewrite of `sql`, or `None` when it cannot touch a routed table
    /// (the pre-filter's answer, which needs no cache). `compute` rewrites
    /// a text on a miss (the caller chooses the thread it runs on); it may
    /// be called for the statement's shape too.
    pub fn rewrite_with(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
        compute: impl Fn(&str) -> Rewrite,
    ) -> Option<Cached> {
        self.rewrite_recent(rules, sql, path, compute, &Mutex::default())
    }

    /// [`RewriteCache::rewrite_with`] for a session that keeps the shapes
    /// it recognised last in `recent` (locked only for a text the pre-filter
    /// passes).
    pub fn rewrite_recent(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
        compute: impl Fn(&str) -> Rewrite,
        recent: &Mutex<RecentShapes>,
    ) -> Option<Cached> {
        if !rules.may_rewrite(sql) {
            return None;
        }
        let current = |e: &Entry| e.version == rules.version() && e.path == path.id;
        let normalizable = rules.normalizable && sql.len() <= Self::MAX_STATEMENT;
        if normalizable {
            if let Some(result) = self.recognise(rules, sql, path, recent) {
                return Some(Cached::Own(result));
            }
        }
        let normalized = normalizable
            .then(|| crate::normalize::normalize(sql))
            .flatten();
        let Some(n) = normalized else {
            if let Some(e) = self.map.get(sql).filter(|e| current(e)) {
                if let EntryKind::Text(result) = &e.kind {
                    return Some(Cached::Shared(result.clone()));
                }
            }
            let result = Arc::new(compute(sql));
            if sql.len() <= Self::MAX_STATEMENT {
                self.insert(rules, sql, path, EntryKind::Text(result.clone()));
            }
            return Some(Cached::Shared(result));
        };
        let cached = self
            .map
            .get(n.shape.as_str())
            .filter(|e| current(e))
            .map(|e| match &e.kind {
                EntryKind::Shape(shape) => Some(shape.clone()),
                _ => None,
            });
        match cached {
            Some(Some(shape)) => {
                self.remember(rules, &n, path, &shape);
                Some(Cached::Own(shape.fill(n.ranges(), sql)))
            }
            Some(None) => Some(Cached::Own(compute(sql))),
            None => {
                let cold = compute(sql);
                let shaped = Shaped::of(&compute(&n.shape), n.literals());
                let kind = match shaped {
                    Some(shape) if shape.fill(n.ranges(), sql) == cold => {
                        let shape = Arc::new(shape);
                        self.remember(rules, &n, path, &shape);
                        EntryKind::Shape(shape)
                    }
                    _ => EntryKind::Cold,
                };
                self.insert(rules, &n.shape, path, kind);
                Some(Cached::Own(cold))
            }
        }
    }

    /// The rewrite of `sql` if it is of a trusted shape, current for
    /// `rules` and `path`, among the session's `recent` ones or known by its
    /// lead: the lexer is not run.
    fn recognise(
        &self,
        rules: &ActiveRules,
        sql: &str,
        path: &SearchPath,
        recent: &Mutex<RecentShapes>,
    ) -> Option<Rewrite> {
        let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
        // The literals' ranges: on the stack for the usual few.
        let mut inline: [Range<usize>; INLINE_LITERALS] = std::array::from_fn(|_| 0..0);
        let mut spilled = Vec::new();
        let current = |k: &Known| k.version == rules.version() && k.path == path.id;
        let mut try_one = |k: &Known| {
            let n = k.shape.literals();
            let literals = match n <= INLINE_LITERALS {
                true => &mut inline[..n],
                false => {
                    spilled.resize(n, 0..0);
                    &mut spilled[..]
                }
            };
            k.shape
                .recognise(sql, literals)
                .then(|| k.rewrite.fill(literals, sql))
        };
        let hit = recent
            .0
            .iter()
            .enumerate()
            .filter(|(_, k)| k.shape.may_be(sql) && current(k))
            .find_map(|(i, k)| try_one(k).map(|r| (i, r)));
        if let Some((i, result)) = hit {
            if i > 0 {
                let k = recent.0.remove(i);
                recent.0.insert(0, k);
            }
            return Some(result);
        }
        let shapes = self.known.get(lead(sql))?;
        let (known, result) = shapes
            .iter()
            .rev()
            .filter(|k| current(k))
            .find_map(|k| try_one(k).map(|r| (k.clone(), r)))?;
        drop(shapes);
        recent.note(known);
        Some(result)
    }

    /// Keeps a trusted shape for recognition by its lead, in place of
    /// stale ones and the oldest beyond [`SHAPES_PER_LEAD`].
    fn remember(
        &self,
        rules: &ActiveRules,
        n: &Normalized,
        path: &SearchPath,
        rewrite: &Arc<Shaped>,
    ) {
        let key = lead(&n.shape);
        let this = |k: &Known| k.path == path.id && k.shape.text() == n.shape;
        // A shape hit whose text was not recognised (its lead differs from
        // the shape's, e.g. `E'..'` first) comes here every time: a read,
        // not a rebuild and a write.
        let known = |k: &Known| k.version == rules.version() && this(k);
        if self
            .known
            .get(key)
            .is_some_and(|v| v.iter().any(|k| known(k)))
        {
            return;
        }
        let Some(shape) = KnownShape::new(&n.shape, n.literals()) else {
            return;
        };
        let mut shapes = self.known.entry(key.into()).or_default();
        let held = |v: &[Arc<Known>]| v.iter().map(|k| k.shape.text().len()).sum::<usize>();
        let before = held(&shapes);
        shapes.retain(|k| k.version == rules.version() && !this(k));
        if shapes.len() == SHAPES_PER_LEAD {
            shapes.remove(0);
        }
        let dropped = before - held(&shapes);
        use std::sync::atomic::Ordering::Relaxed;
        // Shapes replaced stop counting (saturating: a clear may have reset
        // the count meanwhile).
        let _ = self.bytes.fetch_update(Relaxed, Relaxed, |b| {
            Some(b.saturating_sub(dropped) + n.shape.len())
        });
        shapes.push(Arc::new(Known {
            version: rules.version(),
            path: path.id,
            shape,
            rewrite: rewrite.clone(),
        }));
    }

    fn insert(&self, rules: &ActiveRules, key: &str, path: &SearchPath, kind: EntryKind) {
        let size = key.len()
            + match &kind {
                EntryKind::Text(r) => match &**r {
                    Rewrite::Rewritten(t, _) => t.len(),
                    _ => 0,
                },
                // About the rewrite's length.
                EntryKind::Shape(_) => key.len(),
                EntryKind::Cold => 0,
            };
        use std::sync::atomic::Ordering::Relaxed;
        if self.map.len() >= self.capacity || self.bytes.load(Relaxed) + size > Self::MAX_BYTES {
            // Crude but bounded: start over rather than track recency.
            self.map.clear();
            self.known.clear();
            self.bytes.store(0, Relaxed);
        }
        self.bytes.fetch_add(size, Relaxed);
        self.map.insert(
            key.into(),
            Entry {
                version: rules.version(),
                path: path.id,
                kind,
            },
        );
    }

    /// [`RewriteCache::rewrite_with`], computing on this thread.
    pub fn rewrite(&self, rules: &ActiveRules, sql: &str, path: &SearchPath) -> Option<Cached> {
        self.rewrite_with(rules, sql, path, |text| rules.rewrite(text, path.schemas()))
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
        let (Cached::Shared(a), Cached::Shared(b)) = (
            cache.rewrite(&v1, sql, &path).unwrap(),
            cache.rewrite(&v1, sql, &path).unwrap(),
        ) else {
            panic!("a text without literals is cached as it is");
        };
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

    #[test]
    fn statements_that_differ_in_literals_share_one_shape() {
        let cache = RewriteCache::new(10);
        let path = SearchPath::new(vec!["public".into()]);
        let rules = ActiveRules::compile(users(Phase::DualWrite.routing().unwrap())).unwrap();
        let parses = std::cell::Cell::new(0);
        let compute = |text: &str| {
            parses.set(parses.get() + 1);
            rules.rewrite(text, path.schemas())
        };
        for i in 0..20 {
            let sql = format!("update users set email = 'U{i}@X.io' where id = {i}");
            let got = cache.rewrite_with(&rules, &sql, &path, compute).unwrap();
            assert_eq!(*got, rules.rewrite(&sql, path.schemas()), "{sql}");
        }
        // The first statement is rewritten both ways; the others are spliced.
        assert_eq!(parses.get(), 2);
        assert_eq!(cache.len(), 1);
        // More literals than are held on the stack.
        for i in 0..5 {
            let list: Vec<String> = (0..20).map(|k| (k * 7 + i).to_string()).collect();
            let sql = format!(
                "update users set email = 'V{i}' where id in ({})",
                list.join(", ")
            );
            let got = cache.rewrite_with(&rules, &sql, &path, compute).unwrap();
            assert_eq!(*got, rules.rewrite(&sql, path.schemas()), "{sql}");
        }
        assert_eq!(parses.get(), 4, "one shape, spliced after its first text");
    }

    /// A literal that may go into `forward` bare does so when it is short
    /// and keeps its cast when it is long, whether the statement is spliced
    /// into its shape or rewritten cold: one shape serves both.
    #[test]
    fn a_shape_chooses_each_literals_cast_by_its_length() {
        let cache = RewriteCache::new(10);
        let path = SearchPath::new(vec!["public".into()]);
        let mut set = users(Phase::DualWrite.routing().unwrap());
        let m = &mut set.tables[0].mappings[0];
        m.forward_takes_literals = true;
        m.legacy_type = "character varying(8)".into();
        let rules = ActiveRules::compile(set).unwrap();
        let parses = std::cell::Cell::new(0);
        let compute = |text: &str| {
            parses.set(parses.get() + 1);
            rules.rewrite(text, path.schemas())
        };
        let short = |v: &str| format!("email_address = (lower(({v})))");
        let long = |v: &str| format!("email_address = (lower((({v})::character varying(8))))");
        for (value, expected) in [
            ("'a@b'", short("'a@b'")),
            ("'abcdefghij'", long("'abcdefghij'")),
            ("E'x\\y'", short("E'x\\y'")),
            ("'abcdef'", short("'abcdef'")),
            ("'abcdefg'", long("'abcdefg'")),
        ] {
            let sql = format!("update users set email = {value} where id = 1");
            let got = cache.rewrite_with(&rules, &sql, &path, compute).unwrap();
            assert_eq!(*got, rules.rewrite(&sql, path.schemas()), "{sql}");
            let Rewrite::Rewritten(text, _) = &*got else {
                panic!("{sql} not rewritten: {got:?}")
            };
            assert!(text.contains(&expected), "{text} lacks {expected}");
            assert!(!text.contains("zzsy"), "{text}");
        }
        // Both lengths came from the one shape (E'..' has a shape of its own
        // lead but the same shape text).
        assert_eq!(parses.get(), 2);
    }

    /// A session's recent shapes give what the shared map gives, keep at
    /// most a few, and are passed over once the rules change.
    #[test]
    fn a_sessions_recent_shapes_stand_in_for_the_map() {
        let cache = RewriteCache::new(100);
        let path = SearchPath::new(vec!["public".into()]);
        let rules = ActiveRules::compile(users(Phase::DualWrite.routing().unwrap())).unwrap();
        let texts = |i: usize| {
            [
                format!("update users set email = 'U{i}@X.io' where id = {i}"),
                format!("select email from users where id = {i}"),
                format!("insert into users (id, email) values ({i}, 'N{i}@X.io')"),
                format!("update users set name = 'n{i}' where id = {i}"),
                format!("delete from users where email = 'D{i}'"),
                format!("select id from users where email = 'S{i}' limit {i}"),
            ]
        };
        let recent = Mutex::new(RecentShapes::default());
        let held = || recent.lock().unwrap().0.len();
        for i in 0..30 {
            for sql in texts(i) {
                let cold = rules.rewrite(&sql, path.schemas());
                let compute = |text: &str| rules.rewrite(text, path.schemas());
                let got = cache.rewrite_recent(&rules, &sql, &path, compute, &recent);
                assert_eq!(*got.unwrap(), cold, "{sql}");
                assert!(held() <= RECENT_SHAPES);
            }
        }
        assert_eq!(held(), RECENT_SHAPES);
        // Other rules: the recent shapes are not theirs.
        let mut set = users(Phase::ReadsSwitched.routing().unwrap());
        set.version = 99;
        let next = ActiveRules::compile(set).unwrap();
        for sql in texts(31) {
            let cold = next.rewrite(&sql, path.schemas());
            let compute = |text: &str| next.rewrite(text, path.schemas());
            let got = cache.rewrite_recent(&next, &sql, &path, compute, &recent);
            assert_eq!(*got.unwrap(), cold, "{sql}");
        }
    }
}
