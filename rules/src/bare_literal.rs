//! A string literal written to a legacy column goes into `forward` without
//! the cast to the legacy type, when that cannot change the result.
//!
//! The rewrite normally fills `forward` with `(value)::legacy_type`, so
//! that the new column gets `forward` of exactly what the legacy column
//! stores. For `varchar(n)` that cast is costly in PostgreSQL's parse
//! analysis (a length-coercion call per statement), and drivers that
//! inline values send a fresh statement every time. A plain string
//! literal of at most `n` bytes is stored unchanged, so the cast is the
//! identity on it; what remains is function resolution, which the control
//! plane proves against the catalog when the migration is created
//! ([`crate::ColumnMapping::forward_takes_literals`]): `forward` over the
//! literal resolves exactly as over the cast value.
//!
//! The same holds for a literal in parentheses, which is how pgjdbc's
//! simple query mode inlines every string parameter (`('..')`), and for
//! `NULL`: both are unknown-type constants, as the probe was.
//!
//! The decision depends on the literal's length, which a cached shape does
//! not know: in a shape, such a value is written with a mark (a comment,
//! inert if it ever reached the server) that the splice reads to choose
//! per statement (see [`crate::normalize::Spliceable`]).

use crate::normalize::{next_placeholder, string_end};

/// Opens the mark; its `'zzsy` keeps a text that already holds one from
/// being normalised, so that only a rewrite writes marks.
pub(crate) const MARK_OPEN: &str = "/*'zzsy:";

/// The longest literal (in bytes, quotes included) that needs no cast to
/// `legacy_type`: `n` for `character varying(n)`, unbounded for `text` and
/// `character varying`; `None` for any other type.
pub fn length_bound(legacy_type: &str) -> Option<usize> {
    match legacy_type {
        "text" | "character varying" => Some(usize::MAX),
        _ => legacy_type
            .strip_prefix("character varying(")?
            .strip_suffix(')')?
            .parse()
            .ok(),
    }
}

/// Whether `value` is exactly one `'..'` or `E'..'` literal: an unknown-type
/// constant, as the proof's probe was. A byte count bounds its characters.
fn is_plain_string(value: &str) -> bool {
    let b = value.as_bytes();
    let escaped = matches!(b.first(), Some(b'e' | b'E'));
    b.get(usize::from(escaped)) == Some(&b'\'') && string_end(b, 0, escaped) == Some(b.len())
}

/// Whether `value` is exactly one string placeholder of a shape.
fn is_placeholder(value: &str) -> bool {
    matches!(next_placeholder(value), Some(Some(p)) if p.string && p.at == (0..value.len()))
}

/// `value` without the parentheses around it, if what they hold is a
/// string literal, a shape's placeholder for one, or `NULL`.
fn constant(value: &str) -> Option<&str> {
    let mut inner = value;
    loop {
        if is_plain_string(inner) || is_placeholder(inner) || is_null(inner) {
            return Some(inner);
        }
        inner = inner.strip_prefix('(')?.strip_suffix(')')?;
    }
}

fn is_null(value: &str) -> bool {
    value.eq_ignore_ascii_case("null")
}

/// Whether `value` is a string literal, a shape's placeholder for one or
/// `NULL`, parenthesised or not: [`forward_arg`] may leave it bare.
pub(crate) fn is_literal(value: &str) -> bool {
    constant(value).is_some()
}

/// `value` as `forward`'s argument for a legacy column of type `ty`:
/// bare when it is `NULL` or a string literal within `bound`, marked when
/// it is a shape's placeholder (the splice decides), cast otherwise. The
/// parentheses around a constant are left out, so that a cold rewrite and
/// a shape's splice write the same text.
pub(crate) fn forward_arg(value: &str, ty: &str, bound: Option<usize>) -> String {
    let Some(bound) = bound else {
        return cast(value, ty);
    };
    match constant(value) {
        Some(c) if is_placeholder(c) => format!("{MARK_OPEN}{bound}:{}*/{}", ty.len(), cast(c, ty)),
        Some(c) if is_null(c) || c.len() <= bound => c.to_owned(),
        Some(c) => cast(c, ty),
        None => cast(value, ty),
    }
}

/// `value` cast to `ty`, parenthesised so that the cast binds to all of it.
pub(crate) fn cast(value: &str, ty: &str) -> String {
    format!("({value})::{ty}")
}

/// A mark read back: the bound, and the cast's type text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Literals up to this many bytes go bare.
    pub(crate) bound: usize,
    /// Bytes of the type after `)::`.
    pub(crate) type_len: usize,
    /// Bytes of the mark itself, up to its `*/`.
    pub(crate) len: usize,
}

/// The mark at the start of `text`, if one is there.
pub(crate) fn read_mark(text: &str) -> Option<Mark> {
    let rest = text.strip_prefix(MARK_OPEN)?;
    let end = rest.find("*/")?;
    let (bound, type_len) = rest[..end].split_once(':')?;
    Some(Mark {
        bound: bound.parse().ok()?,
        type_len: type_len.parse().ok()?,
        len: MARK_OPEN.len() + end + 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_come_from_string_types_only() {
        assert_eq!(length_bound("character varying(320)"), Some(320));
        assert_eq!(length_bound("text"), Some(usize::MAX));
        assert_eq!(length_bound("character varying"), Some(usize::MAX));
        for other in ["character(8)", "integer", "citext", "character varying(x)"] {
            assert_eq!(length_bound(other), None, "{other}");
        }
    }

    #[test]
    fn only_a_short_plain_string_goes_bare() {
        let ty = "character varying(8)";
        let arg = |v: &str| forward_arg(v, ty, Some(8));
        assert_eq!(arg("'abc'"), "'abc'");
        assert_eq!(arg("E'a\\'b'"), "E'a\\'b'");
        assert_eq!(arg("'it''s'"), "'it''s'");
        // Longer than the bound: it may be truncated; keep the cast.
        assert_eq!(arg("'abcdefgh'"), "('abcdefgh')::character varying(8)");
        // pgjdbc's simple mode, and NULL: constants too.
        assert_eq!(arg("('abc')"), "'abc'");
        assert_eq!(arg("(('abc'))"), "'abc'");
        assert_eq!(arg("('abcdefgh')"), "('abcdefgh')::character varying(8)");
        assert_eq!(arg("NULL"), "NULL");
        assert_eq!(arg("(null)"), "null");
        for v in [
            "42",
            "('a') || ('b')",
            "('a'",
            "()",
            "(NULL::text)",
            "N'abc'",
            "'a' || 'b'",
            "'a'::text",
            "$1",
            "U&'x'",
        ] {
            assert_eq!(arg(v), format!("({v})::{ty}"), "{v}");
        }
        assert_eq!(
            forward_arg("'abc'", ty, None),
            "('abc')::character varying(8)"
        );
    }

    #[test]
    fn a_placeholder_is_marked_and_the_mark_reads_back() {
        let marked = forward_arg("'zzsy00003'", "character varying(8)", Some(8));
        assert_eq!(marked, "/*'zzsy:8:20*/('zzsy00003')::character varying(8)");
        let mark = read_mark(&marked).unwrap();
        assert_eq!((mark.bound, mark.type_len), (8, 20));
        assert_eq!(&marked[mark.len..mark.len + 1], "(");
        assert_eq!(read_mark("/*'zzsy00001'*/"), None);
        // In parentheses: the same mark, around the placeholder alone.
        let within = forward_arg("(('zzsy00003'))", "character varying(8)", Some(8));
        assert_eq!(within, marked);
    }
}
