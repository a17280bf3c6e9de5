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
//! parameters. A text that already contains a placeholder's prefix, has a
//! `U&` string (its `UESCAPE` must stay one character), or has too many
//! literals is not normalised.

use std::ops::Range;

use crate::bare_literal::{read_mark, MARK_OPEN};
use crate::rewrite::scan::{block_comment, dollar, quoted};

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

/// Bytes that continue an identifier, by table (the lexer's inner loop).
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    t
};

pub(crate) fn ident_byte(c: u8) -> bool {
    IDENT[c as usize]
}

/// Text the lexer passes over (comments, quoted names, dollar strings,
/// prefixed strings, words) must not look like a placeholder: the splice
/// would take it for one. Only regions that can hold one are looked at.
fn looks_placeholder(region: &[u8]) -> bool {
    region.len() >= NUMBER_PREFIX.len()
        && region.contains(&b'9')
        && region
            .windows(NUMBER_PREFIX.len())
            .any(|w| w == NUMBER_PREFIX.as_bytes())
        || region.len() >= STRING_PREFIX.len()
            && region.contains(&b'\'')
            && region
                .windows(STRING_PREFIX.len())
                .any(|w| w == STRING_PREFIX.as_bytes())
}

/// The shape of `sql`, or `None` when it has no literal to lift or cannot
/// be normalised safely. One pass over the bytes, with the scanner's rules
/// for comments, quoted identifiers and dollar quoting (a hot path: every
/// inline-literal statement on a routed table goes through it).
pub fn normalize(sql: &str) -> Option<Normalized> {
    let b = sql.as_bytes();
    let mut shape = String::with_capacity(sql.len() + 64);
    let mut literals: Vec<Range<usize>> = Vec::with_capacity(16);
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' {
            i += 1;
            continue;
        }
        let after_ident = i > 0 && ident_byte(b[i - 1]);
        // A region passed over, checked, then skipped.
        let skip = |end: usize| -> Option<usize> {
            let end = end.min(b.len());
            (!looks_placeholder(&b[i..end])).then_some(end)
        };
        let (end, string) = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = skip(
                    b[i..]
                        .iter()
                        .position(|&x| x == b'\n')
                        .map_or(b.len(), |p| i + p + 1),
                )?;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip(block_comment(b, i))?;
                continue;
            }
            b'\'' | b'"' if i > 0 && b[i - 1] == b'&' => return None, // U&'..' UESCAPE
            b'"' => {
                i = skip(quoted(b, i + 1, b'"', false))?;
                continue;
            }
            b'\'' if after_ident => {
                // `B'..'`, `X'..'`, `N'..'`: a prefix glued to the string.
                i = skip(quoted(b, i + 1, b'\'', false))?;
                continue;
            }
            b'\'' => (string_end(b, i, false)?, true),
            b'e' | b'E' if !after_ident && b.get(i + 1) == Some(&b'\'') => {
                (string_end(b, i, true)?, true)
            }
            b'$' => {
                i = skip(dollar(b, i).unwrap_or(i + 1))?;
                continue;
            }
            b'0'..=b'9' if !after_ident => (number_end(b, i), false),
            c if ident_byte(c) => {
                let mut j = i + 1;
                let mut nine = c == b'9';
                while j < b.len() && ident_byte(b[j]) {
                    nine |= b[j] == b'9';
                    j += 1;
                }
                // Only a word with a 9 in it can hold the number prefix.
                i = if nine { skip(j)? } else { j };
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if literals.len() == MAX_LITERALS {
            return None;
        }
        shape.push_str(&sql[copied..i]);
        shape.push_str(if string { STRING_PREFIX } else { NUMBER_PREFIX });
        push_index(&mut shape, literals.len());
        if string {
            shape.push('\'');
        }
        literals.push(i..end);
        copied = end;
        i = end;
    }
    if literals.is_empty() {
        return None;
    }
    shape.push_str(&sql[copied..]);
    Some(Normalized { shape, literals })
}

/// The end of the string literal at `i` (`'..'`, or `E'..'` when
/// `escaped`), or `None` when it is unterminated: the parser's to refuse.
pub(crate) fn string_end(b: &[u8], i: usize, escaped: bool) -> Option<usize> {
    let end = quoted(b, i + 1 + usize::from(escaped), b'\'', escaped);
    (end <= b.len() && end >= i + 2 && b[end - 1] == b'\'').then_some(end)
}

/// The end of the number literal starting with the digit at `i`.
pub(crate) fn number_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
        j += 1;
    }
    j
}

fn push_index(out: &mut String, index: usize) {
    let mut digits = [b'0'; DIGITS];
    let mut n = index;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend(digits.iter().map(|&d| d as char));
}

/// Spare capacity a filled rewrite leaves after its text: a wire frame's
/// 5-byte header and terminator, so that the proxy frames the text where
/// it lies, without copying it.
pub const ROOM: usize = 6;

/// A placeholder found in a shape or its rewrite.
pub(crate) struct Placeholder {
    /// Where it is.
    pub(crate) at: Range<usize>,
    /// The literal it stands for.
    pub(crate) index: usize,
    /// A string's (rather than a number's).
    pub(crate) string: bool,
}

/// The first placeholder of `text`: `None` if there is none, `Some(None)`
/// if one is malformed.
pub(crate) fn next_placeholder(text: &str) -> Option<Option<Placeholder>> {
    let (start, prefix) = [STRING_PREFIX, NUMBER_PREFIX]
        .iter()
        .filter_map(|p| text.find(p).map(|i| (i, *p)))
        .min()?;
    let string = prefix == STRING_PREFIX;
    let digits = start + prefix.len();
    let end = digits + DIGITS + usize::from(string);
    let index = text
        .get(digits..digits + DIGITS)
        .and_then(|d| d.parse().ok());
    let closed = !string || text.get(end - 1..end) == Some("'");
    Some(index.filter(|_| closed).map(|index| Placeholder {
        at: start..end,
        index,
        string,
    }))
}

/// A rewrite of a shape, cut at its placeholders, ready to take a
/// statement's literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spliceable {
    pieces: Vec<Piece>,
    /// Bytes of text besides the literals.
    fixed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Literal(usize),
    /// A string literal that is `forward`'s argument: bare up to `bound`
    /// bytes, else `(literal)` and the cast (see [`crate::bare_literal`]).
    Bounded {
        index: usize,
        bound: usize,
        cast: Box<str>,
    },
}

impl Piece {
    /// Bytes this piece adds for the literal of `len` bytes it holds.
    fn literal_bytes(&self, len: usize) -> usize {
        match self {
            Piece::Text(_) => 0,
            Piece::Literal(_) => len,
            Piece::Bounded { bound, cast, .. } if len > *bound => len + 2 + cast.len(),
            Piece::Bounded { .. } => len,
        }
    }
}

impl Spliceable {
    /// Cuts `rewritten` at its placeholders; `None` if one is malformed or
    /// names a literal beyond `literals`.
    pub fn compile(rewritten: &str, literals: usize) -> Option<Self> {
        let mut pieces = Vec::new();
        let mut fixed = 0;
        let mut rest = rewritten;
        loop {
            let p = match next_placeholder(rest) {
                None => {
                    fixed += rest.len();
                    pieces.push(Piece::Text(rest.into()));
                    return Some(Spliceable { pieces, fixed });
                }
                Some(Some(p)) => p,
                // A mark holds a placeholder's prefix: when it is the first
                // prefix found, the marked cast is read whole.
                Some(None) => {
                    let m = rest.find(MARK_OPEN)?;
                    if next_placeholder(&rest[..m + 2]).is_some() {
                        return None;
                    }
                    let (piece, len) = bounded(&rest[m..], literals)?;
                    fixed += m;
                    pieces.push(Piece::Text(rest[..m].into()));
                    pieces.push(piece);
                    rest = &rest[m + len..];
                    continue;
                }
            };
            fixed += p.at.start;
            pieces.push(Piece::Text(rest[..p.at.start].into()));
            pieces.push(Piece::Literal(Some(p.index).filter(|&n| n < literals)?));
            rest = &rest[p.at.end..];
        }
    }

    /// The text with the literals at `literals` (ranges of `sql`, by
    /// index) in their places.
    /// Exactly [`ROOM`] bytes of capacity are left after the text.
    pub fn fill(&self, literals: &[Range<usize>], sql: &str) -> String {
        let literal_bytes: usize = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(i) | Piece::Bounded { index: i, .. } => {
                    p.literal_bytes(literals[*i].len())
                }
                Piece::Text(_) => 0,
            })
            .sum();
        let mut out = String::with_capacity(self.fixed + literal_bytes + ROOM);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Literal(i) => out.push_str(&sql[literals[*i].clone()]),
                Piece::Bounded { index, bound, cast } => {
                    let literal = &sql[literals[*index].clone()];
                    if literal.len() <= *bound {
                        out.push_str(literal);
                    } else {
                        out.push('(');
                        out.push_str(literal);
                        out.push(')');
                        out.push_str(cast);
                    }
                }
            }
        }
        out
    }
}

/// The marked cast at the start of `text` (mark, `(`, string placeholder,
/// `)::type`) as a piece, with the bytes it spans.
fn bounded(text: &str, literals: usize) -> Option<(Piece, usize)> {
    let mark = read_mark(text)?;
    let inner = text[mark.len..].strip_prefix('(')?;
    let p = next_placeholder(inner)??;
    if p.at.start != 0 || !p.string || p.index >= literals {
        return None;
    }
    let after = inner[p.at.end..].strip_prefix(')')?;
    let cast = after
        .get(..2 + mark.type_len)
        .filter(|c| c.starts_with("::"))?;
    let len = mark.len + 1 + p.at.end + 1 + cast.len();
    let piece = Piece::Bounded {
        index: p.index,
        bound: mark.bound,
        cast: cast.into(),
    };
    Some((piece, len))
}

impl Normalized {
    /// How many literals were lifted.
    pub fn literals(&self) -> usize {
        self.literals.len()
    }

    /// Each literal's range in the text this was made from, by index.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.literals
    }

    /// `sql` (the text this was made from) with literal `i` replaced by
    /// `f(i, its text)`: a statement of the same shape, for tests.
    pub fn relabel(&self, sql: &str, mut f: impl FnMut(usize, &str) -> String) -> String {
        let mut out = String::with_capacity(sql.len());
        let mut at = 0;
        for (i, r) in self.literals.iter().enumerate() {
            out.push_str(&sql[at..r.start]);
            out.push_str(&f(i, &sql[r.clone()]));
            at = r.end;
        }
        out.push_str(&sql[at..]);
        out
    }

    /// `rewritten` (a rewrite of the shape) with every placeholder
    /// replaced by its literal from `sql`, the text this was made from.
    pub fn splice(&self, sql: &str, rewritten: &str) -> Option<String> {
        Some(Spliceable::compile(rewritten, self.literals.len())?.fill(&self.literals, sql))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the pieces (multi-byte characters, pieces and literals
        /// at the very end), filling gives what plain concatenation gives,
        /// with exactly the room a wire header needs left over.
        #[test]
        fn fill_is_concatenation(
            parts in proptest::collection::vec(("[a-zé€ ,()']{0,20}", 0usize..4), 0..8),
            tail in "[a-zé ]{0,20}",
            values in proptest::collection::vec("[0-9a-zé]{0,24}", 4),
        ) {
            let mut rewritten = String::new();
            let mut expected = String::new();
            for (text, literal) in &parts {
                rewritten.push_str(text);
                rewritten.push_str(&format!("{NUMBER_PREFIX}{literal:0DIGITS$}"));
                expected.push_str(text);
                expected.push_str(&values[*literal]);
            }
            rewritten.push_str(&tail);
            expected.push_str(&tail);
            let mut sql = String::new();
            let mut ranges = Vec::new();
            for v in &values {
                sql.push_str("x ");
                ranges.push(sql.len()..sql.len() + v.len());
                sql.push_str(v);
            }
            let filled = Spliceable::compile(&rewritten, 4).unwrap().fill(&ranges, &sql);
            proptest::prop_assert_eq!(&filled, &expected);
            proptest::prop_assert_eq!(filled.capacity(), filled.len() + ROOM);
        }
    }

    fn shape(sql: &str) -> Option<String> {
        normalize(sql).map(|n| n.shape)
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
        assert_eq!(shape("select 1 /* 90721300001 looks like one */"), None);
        assert_eq!(shape("select \"'zzsy00000'\", 1"), None);
        assert_eq!(shape("select c90721300000 from t where x = 1"), None);
        // A literal that looks like one is lifted like any other.
        assert_eq!(shape("select 90721300001").unwrap(), "select 90721300000");
    }

    #[test]
    fn splice_puts_every_copy_back() {
        let sql = "update users set email = 'X@Y' where id = 7";
        let n = normalize(sql).unwrap();
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
