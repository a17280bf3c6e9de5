//! Recognising a text of a shape already seen, without the lexer.
//!
//! A shape (see [`crate::normalize`]) is fixed text with a placeholder
//! where each literal was. A text is of that shape when it is the same
//! fixed text with a literal of the same kind at each placeholder: that is
//! checked by walking the text against the shape, comparing the fixed runs
//! as bytes and scanning only the literals, which costs a fraction of
//! lexing the whole text. Candidates are found by the text's lead: its
//! bytes before the first that can begin a literal, which every text of a
//! shape shares.
//!
//! Why the walk gives what the lexer would: the lexer ends every token
//! before a literal within the fixed text (the byte before a literal is
//! never an identifier byte, or it would not have been a literal; nor a
//! quote before a quote, which continues a string), and a
//! literal ends where the next fixed run begins (that run never starts
//! with a byte the literal would take in: its first byte ended the
//! literal in the shape's own text). The same bytes then lex the same way,
//! and the literals end where the lexer would end them.

use std::ops::Range;

use crate::normalize::{ident_byte, next_placeholder, number_end, string_end};

/// A shape cut where its literals go.
#[derive(Debug)]
pub(crate) struct KnownShape {
    shape: Box<str>,
    /// The fixed runs of `shape`: one before each literal, and the tail.
    fixed: Box<[Range<usize>]>,
    /// Per literal: a string's (else a number's).
    strings: Box<[bool]>,
    /// The first eight bytes of every text of the shape, if its first
    /// fixed run has that many: a cheap first test (see
    /// [`KnownShape::may_be`]).
    head: Option<u64>,
}

impl KnownShape {
    /// The shape `shape` of `literals` literals, or `None` when its
    /// placeholders are not those literals in order.
    pub(crate) fn new(shape: &str, literals: usize) -> Option<Self> {
        let mut fixed = Vec::with_capacity(literals + 1);
        let mut strings = Vec::with_capacity(literals);
        let mut at = 0;
        while let Some(p) = next_placeholder(&shape[at..]) {
            let p = p.filter(|p| p.index == strings.len())?;
            fixed.push(at..at + p.at.start);
            strings.push(p.string);
            at += p.at.end;
        }
        fixed.push(at..shape.len());
        let head = shape
            .as_bytes()
            .get(..8)
            .filter(|_| fixed[0].len() >= 8)
            .map(word);
        (strings.len() == literals && literals > 0).then(|| KnownShape {
            shape: shape.into(),
            fixed: fixed.into(),
            strings: strings.into(),
            head,
        })
    }

    /// False if `sql` cannot be of this shape by its first eight bytes
    /// (one comparison): what a session's recent shapes are tried with
    /// first, most of them being other shapes.
    pub(crate) fn may_be(&self, sql: &str) -> bool {
        match (self.head, sql.as_bytes().get(..8)) {
            (Some(head), Some(first)) => word(first) == head,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// The shape's text.
    pub(crate) fn text(&self) -> &str {
        &self.shape
    }

    /// How many literals a text of this shape has.
    pub(crate) fn literals(&self) -> usize {
        self.strings.len()
    }

    /// Whether `sql` is of this shape; if so, `literals` (of at least
    /// [`KnownShape::literals`] ranges) holds the range of each of its
    /// literals, by index.
    pub(crate) fn recognise(&self, sql: &str, literals: &mut [Range<usize>]) -> bool {
        if literals.len() < self.strings.len() {
            return false;
        }
        let (b, shape) = (sql.as_bytes(), self.shape.as_bytes());
        let mut i = 0;
        for (k, (run, &string)) in self.fixed.iter().zip(self.strings.iter()).enumerate() {
            let run = &shape[run.clone()];
            if b.get(i..i + run.len()) != Some(run) {
                return false;
            }
            i += run.len();
            // What comes before may be the previous literal: a literal
            // glued to it is no literal (`1'a'`, `x1`), and a quote after
            // a quote continues that string.
            let before = i.checked_sub(1).map(|p| b[p]);
            if before.is_some_and(ident_byte) {
                return false;
            }
            let end = match b.get(i) {
                // After `&` it would end a `U&` string, which the lexer
                // refuses.
                Some(b'\'') if string && !matches!(before, Some(b'&' | b'\'')) => {
                    string_end(b, i, false)
                }
                Some(b'e' | b'E') if string && b.get(i + 1) == Some(&b'\'') => {
                    string_end(b, i, true)
                }
                Some(b'0'..=b'9') if !string => Some(number_end(b, i)),
                _ => None,
            };
            let Some(end) = end else {
                return false;
            };
            literals[k] = i..end;
            i = end;
        }
        let tail = self.fixed.last().map_or(&[][..], |r| &shape[r.clone()]);
        b.get(i..) == Some(tail)
    }
}

/// Eight bytes as a word.
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// The lead of `sql`: its bytes before the first that may begin a literal
/// (a quote, a digit, or `e` before a quote). Texts of one shape share it.
pub(crate) fn lead(sql: &str) -> &[u8] {
    let b = sql.as_bytes();
    let mut end = first_quote_or_digit(b);
    // `e'`: the `e` is where an escape string begins.
    if end > 0 && b.get(end) == Some(&b'\'') && b[end - 1] | 0x20 == b'e' {
        end -= 1;
    }
    &b[..end]
}

/// Where the first quote or digit of `b` is (its length if none): every
/// text on a routed table passes through here.
fn first_quote_or_digit(b: &[u8]) -> usize {
    crate::swar::find(b, 0, [(b'\'', 1), (b'0', 10)]).unwrap_or(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use proptest::prelude::*;

    fn known(sql: &str) -> KnownShape {
        let n = normalize(sql).unwrap();
        KnownShape::new(&n.shape, n.literals()).unwrap()
    }

    #[test]
    fn recognises_texts_that_differ_only_in_literals() {
        let k = known("update users set email = 'a' where id = 7 and x = E'b\\'c'");
        let mut lits = vec![0..0; k.literals()];
        let sql = "update users set email = 'it''s' where id = 1234 and x = 'z'";
        assert!(k.recognise(sql, &mut lits));
        assert_eq!(lits, normalize(sql).unwrap().ranges());
        for other in [
            "update users set email = 'a' where id = 7 and x = 'b' ",
            "update users set email = 'a' where id = 7 and x = b",
            "update users set email = 'a' where id = x7 and x = 'b'",
            "update users set email = 1 where id = 7 and x = 'b'",
            "update users set email = 'a' where id = 7 and x = 'b",
            "update users set name = 'a' where id = 7 and x = 'b'",
        ] {
            assert!(!k.recognise(other, &mut lits), "{other}");
        }
    }

    #[test]
    fn the_lead_stops_before_any_literal() {
        assert_eq!(
            lead("select a from t where b = 'x'"),
            b"select a from t where b = "
        );
        assert_eq!(lead("select E'x'"), b"select ");
        assert_eq!(lead("select t2.a"), b"select t");
        assert_eq!(lead("select a"), b"select a");
    }

    proptest! {
        #[test]
        fn the_lead_is_the_first_stop(sql in "[a-zA-Z ,=()]{0,30}[eE]?['0-9]?[ -~]{0,10}") {
            let b = sql.as_bytes();
            let naive = (0..b.len())
                .find(|&i| {
                    b[i] == b'\'' || b[i].is_ascii_digit()
                        || (b[i] | 0x20 == b'e' && b.get(i + 1) == Some(&b'\''))
                })
                .unwrap_or(b.len());
            prop_assert_eq!(lead(&sql), &b[..naive]);
        }
    }

    fn one_of(texts: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(texts).prop_map(str::to_owned)
    }

    /// Pieces texts are made of: literals of each kind, the lexer's
    /// regions, and the bytes that end or glue tokens.
    fn piece() -> impl Strategy<Value = String> {
        one_of(&[
            "'a'",
            "'it''s'",
            "E'\\''",
            "e'x'",
            "1",
            "2.5e3",
            "x",
            "E",
            "$1",
            "$$q'1$$",
            "\"q'1\"",
            "/* 1 'c' */",
            "-- 1\n",
            "U&",
            "'",
            " ",
            ".",
            "-",
            "&",
            "_",
            "9",
        ])
    }

    fn literal() -> impl Strategy<Value = String> {
        one_of(&["'b'", "''''", "E'\\\\'", "'1 2'", "42", "7.0", "0x1F"])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        /// Recognition agrees with the lexer: a text recognised as a shape
        /// normalises to that shape with the same literals.
        #[test]
        fn recognition_agrees_with_the_lexer(
            first in proptest::collection::vec(piece(), 1..12),
            second in proptest::collection::vec(piece(), 0..12),
            swaps in proptest::collection::vec((0usize..24, literal()), 0..4),
        ) {
            let base: String = first.concat();
            let Some(n) = normalize(&base) else { return Ok(()) };
            let Some(k) = KnownShape::new(&n.shape, n.literals()) else {
                panic!("a shape the lexer made is not known: {}", n.shape);
            };
            let mut lits = vec![0..0; k.literals()];
            prop_assert!(k.recognise(&base, &mut lits), "its own text: {base}");
            prop_assert_eq!(&lits[..], n.ranges());
            // Other texts: literals swapped, or other pieces altogether.
            let swapped = n.relabel(&base, |i, text| {
                swaps.iter().find(|(at, _)| *at == i).map_or(text.to_owned(), |(_, l)| l.clone())
            });
            for sql in [swapped, second.concat(), format!("{base}{}", second.concat())] {
                if k.recognise(&sql, &mut lits) {
                    let again = normalize(&sql);
                    prop_assert!(again.is_some(), "recognised, not normalised: {sql}");
                    let again = again.unwrap();
                    prop_assert_eq!(&again.shape, &n.shape, "{}", sql);
                    prop_assert_eq!(&lits[..], again.ranges());
                    prop_assert_eq!(lead(&sql), lead(&n.shape));
                }
            }
        }
    }
}
