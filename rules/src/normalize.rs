//! Literal normalisation in front of the rewrite cache. Drivers that
//! inline values (psycopg2, Django, PDO's emulated prepares, Rails without
//! prepared statements) send a new text for every row; lifted out, their
//! literals leave one shape per statement, rewritten once and cached.
//!
//! Each string and number literal is replaced by a placeholder of the same
//! kind (`'zzsy00001'`, `90721300001`) that carries its index; the
//! rewriter copies text verbatim and never looks at a literal's value, so
//! the rewrite of the shape with the placeholders put back is the rewrite
//! of the statement. Literals go back as their original text, never as
//! parameters. A text that already contains a placeholder's prefix, uses
//! `UESCAPE`, or has too many literals is not normalised.

use std::ops::Range;

use crate::rewrite::scan::{Kind, Scan};

const STRING_PREFIX: &str = "'zzsy";
const NUMBER_PREFIX: &str = "907213";
/// Index digits in a placeholder.
const DIGITS: usize = 5;
const MAX_LITERALS: usize = 99_999;

/// A statement's shape and the literals lifted out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The text with placeholders for literals: the cache key.
    pub shape: String,
    /// Each literal's range in the original text, by index.
    literals: Vec<Range<usize>>,
}

/// Whether `text` can hold placeholders without mistaking its own text
/// for one (rule expressions are checked with this too).
pub fn is_clean(text: &str) -> bool {
    !text.contains(STRING_PREFIX) && !text.contains(NUMBER_PREFIX)
}

/// The shape of `sql` (scanned as `scan`), or `None` when it has no
/// literal to lift or cannot be normalised safely.
pub fn normalize(sql: &str, scan: &Scan) -> Option<Normalized> {
    if !is_clean(sql) || contains_ignore_case(sql, "uescape") {
        return None;
    }
    let b = sql.as_bytes();
    let mut shape = String::with_capacity(sql.len() + 16);
    let mut literals = Vec::new();
    let mut at = 0;
    for t in scan.tokens.iter().filter(|t| t.kind == Kind::Literal) {
        let first = b[t.start];
        let string = first == b'\'' || (first | 0x20 == b'e' && b.get(t.start + 1) == Some(&b'\''));
        let number = first.is_ascii_digit();
        // `B'..'`, `X'..'`, `U&'..'`: a prefix glued to the string.
        let prefixed = string
            && first == b'\''
            && t.start > 0
            && (b[t.start - 1].is_ascii_alphanumeric() || b[t.start - 1] == b'&');
        if !(string || number) || prefixed || !closed(&sql[t.start..t.end], string) {
            continue;
        }
        if literals.len() == MAX_LITERALS {
            return None;
        }
        shape.push_str(&sql[at..t.start]);
        if string {
            shape.push_str(&format!("{STRING_PREFIX}{:0DIGITS$}'", literals.len()));
        } else {
            shape.push_str(&format!("{NUMBER_PREFIX}{:0DIGITS$}", literals.len()));
        }
        literals.push(t.start..t.end);
        at = t.end;
    }
    if literals.is_empty() {
        return None;
    }
    shape.push_str(&sql[at..]);
    Some(Normalized { shape, literals })
}

/// A string token that the scan ended at the text's end without its
/// closing quote is left alone (the parser refuses it anyway).
fn closed(token: &str, string: bool) -> bool {
    !string || (token.len() >= 2 && token.ends_with('\''))
}

fn contains_ignore_case(text: &str, word: &str) -> bool {
    text.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
}

impl Normalized {
    /// `rewritten` (a rewrite of the shape) with every placeholder
    /// replaced by its literal from `sql`, the text this was made from.
    /// `None` if a placeholder is malformed or out of range.
    pub fn splice(&self, sql: &str, rewritten: &str) -> Option<String> {
        let mut out = String::with_capacity(rewritten.len() + sql.len() / 2);
        let mut rest = rewritten;
        loop {
            let next = [STRING_PREFIX, NUMBER_PREFIX]
                .iter()
                .filter_map(|p| rest.find(p).map(|i| (i, *p)))
                .min();
            let Some((i, prefix)) = next else {
                out.push_str(rest);
                return Some(out);
            };
            out.push_str(&rest[..i]);
            let digits = rest.get(i + prefix.len()..i + prefix.len() + DIGITS)?;
            let index: usize = digits.parse().ok()?;
            let literal = self.literals.get(index)?;
            out.push_str(&sql[literal.clone()]);
            let mut end = i + prefix.len() + DIGITS;
            if prefix == STRING_PREFIX {
                rest.get(end..end + 1).filter(|q| *q == "'")?;
                end += 1;
            }
            rest = &rest[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::scan::scan;

    fn shape(sql: &str) -> Option<String> {
        normalize(sql, &scan(sql)).map(|n| n.shape)
    }

    #[test]
    fn lifts_strings_and_numbers_but_not_parameters_or_prefixed_strings() {
        assert_eq!(
            shape("update users set email = 'A''b' where id = 42 and x = $1").unwrap(),
            "update users set email = 'zzsy00000' where id = 90721300001 and x = $1"
        );
        assert_eq!(
            shape("select E'a\\'b', DATE '2020-01-01', B'101', $$x$$, -1.5e3").unwrap(),
            "select 'zzsy00000', DATE 'zzsy00001', B'101', $$x$$, -90721300002"
        );
        assert_eq!(shape("select $1"), None);
        assert_eq!(shape("select U&'d!0061t' UESCAPE '!'"), None);
        assert_eq!(shape("select 90721300001 /* looks like one */ , 1"), None);
    }

    #[test]
    fn splice_puts_every_copy_back() {
        let sql = "update users set email = 'X@Y' where id = 7";
        let n = normalize(sql, &scan(sql)).unwrap();
        let rewritten = n.shape.replace(
            "email = 'zzsy00000'",
            "email_address = lower(('zzsy00000')::text), email = 'zzsy00000'",
        );
        assert_eq!(
            n.splice(sql, &rewritten).unwrap(),
            "update users set email_address = lower(('X@Y')::text), email = 'X@Y' where id = 7"
        );
        assert_eq!(n.splice(sql, "'zzsy00009'"), None);
    }
}
