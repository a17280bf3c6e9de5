//! Text edits at parser locations, so that a rewrite keeps the statement's
//! own text (comments, sqlcommenter tags, formatting) and only inserts or
//! replaces what it must.

use sqlparser::tokenizer::{Location, Span};

/// Maps sqlparser's 1-based (line, column-in-chars) locations to byte
/// offsets in constant time: each line's start, and for text that is not
/// ASCII, every character's byte offset.
#[derive(Debug)]
pub struct SourceMap<'a> {
    text: &'a str,
    /// Per line: its first character's index and its length in characters.
    lines: Vec<(usize, usize)>,
    /// Byte offset of each character (and of the end), unless ASCII.
    chars: Option<Vec<u32>>,
}

impl<'a> SourceMap<'a> {
    /// Indexes `text`.
    pub fn new(text: &'a str) -> Self {
        let ascii = text.is_ascii();
        let chars: Option<Vec<u32>> = (!ascii).then(|| {
            text.char_indices()
                .map(|(i, _)| i as u32)
                .chain(std::iter::once(text.len() as u32))
                .collect()
        });
        let mut lines = Vec::new();
        let mut line_start = 0;
        let mut count = 0;
        for (n, c) in text.chars().enumerate() {
            if c == '\n' {
                lines.push((line_start, n - line_start));
                line_start = n + 1;
            }
            count = n + 1;
        }
        lines.push((line_start, count - line_start));
        SourceMap { text, lines, chars }
    }

    /// The byte offset of `loc`, or `None` for an empty location.
    pub fn offset(&self, loc: Location) -> Option<usize> {
        if loc.line == 0 || loc.column == 0 {
            return None;
        }
        let (first, len) = *self.lines.get(loc.line as usize - 1)?;
        let col = loc.column as usize - 1;
        if col > len {
            return None;
        }
        let char_index = first + col;
        match &self.chars {
            None => Some(char_index),
            Some(map) => map.get(char_index).map(|&b| b as usize),
        }
    }

    /// The byte range a span covers (its end is inclusive in sqlparser).
    pub fn range(&self, span: Span) -> Option<std::ops::Range<usize>> {
        let start = self.offset(span.start)?;
        let end = self.offset(span.end)?;
        (start <= end).then_some(start..end)
    }

    /// The whole text.
    pub fn text(&self) -> &'a str {
        self.text
    }
}

/// A set of non-overlapping edits applied in one pass.
#[derive(Debug, Default)]
pub struct Edits {
    edits: Vec<(usize, usize, String)>,
}

impl Edits {
    /// Inserts `text` at byte offset `at`.
    pub fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.edits.push((at, at, text.into()));
    }

    /// Replaces bytes `range` with `text`.
    pub fn replace(&mut self, range: std::ops::Range<usize>, text: impl Into<String>) {
        self.edits.push((range.start, range.end, text.into()));
    }

    /// How many edits are recorded.
    pub fn len(&self) -> usize {
        self.edits.len()
    }

    /// Whether nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// Applies the edits; insertions at one offset keep their order. Two
    /// edits over the same text cannot both apply: that is an error, never
    /// a silently dropped edit.
    pub fn apply(mut self, text: &str) -> Result<String, Overlap> {
        self.edits.sort_by_key(|(start, end, _)| (*start, *end));
        let mut out = String::with_capacity(text.len() + 64);
        let mut at = 0;
        for (start, end, insert) in self.edits {
            if start < at {
                return Err(Overlap { at: start });
            }
            push(&mut out, &text[at..start]);
            push(&mut out, &insert);
            at = end;
        }
        push(&mut out, &text[at..]);
        Ok(out)
    }
}

/// Appends `next`, with a space first where the touching characters would
/// otherwise merge into one token: `status` + `Welete` is one name, `"a"` +
/// `"b"` one quoted name, `-` + `-` a comment.
fn push(out: &mut String, next: &str) {
    if let (Some(a), Some(b)) = (out.chars().next_back(), next.chars().next()) {
        if glues(a, b) {
            out.push(' ');
        }
    }
    out.push_str(next);
}

fn glues(a: char, b: char) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let op = |c: char| "+-*/<>=~!@#%^&|`?".contains(c);
    (word(a) && word(b)) || (op(a) && op(b)) || (a == b && (a == '"' || a == '\''))
}

/// Two edits of one statement overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Where the later one starts.
    pub at: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_locations_across_lines_and_multibyte_chars() {
        let text = "select 'é',\n  x";
        let map = SourceMap::new(text);
        assert_eq!(map.offset(Location { line: 1, column: 1 }), Some(0));
        assert_eq!(
            map.offset(Location {
                line: 1,
                column: 10
            }),
            Some(10)
        );
        assert_eq!(map.offset(Location { line: 2, column: 3 }), Some(15));
        assert_eq!(&text[15..], "x");
        assert_eq!(map.offset(Location { line: 0, column: 0 }), None);
    }

    #[test]
    fn applies_edits_in_order() {
        let mut e = Edits::default();
        e.insert(5, ", b");
        e.replace(0..0, "");
        e.insert(5, ", c");
        assert_eq!(e.apply("(a)  x").unwrap(), "(a)  , b, c x");
        let mut e = Edits::default();
        e.replace(0..3, "x");
        e.replace(1..2, "y");
        assert_eq!(e.apply("abc"), Err(Overlap { at: 1 }));
    }

    #[test]
    fn never_glues_two_tokens_into_one() {
        let mut e = Edits::default();
        e.replace(0..1, "a, b");
        assert_eq!(e.apply("*x").unwrap(), "a, b x");
        let mut e = Edits::default();
        e.replace(3..6, "\"r\"");
        assert_eq!(e.apply("\"p\"\"q\"").unwrap(), "\"p\" \"r\"");
        let mut e = Edits::default();
        e.insert(1, "-1");
        assert_eq!(e.apply("--").unwrap(), "- -1-");
        let mut e = Edits::default();
        e.insert(2, ", c");
        assert_eq!(e.apply("(a)").unwrap(), "(a, c)");
    }
}
