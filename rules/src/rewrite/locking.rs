//! Row-locking clauses the parser does not know. `FOR NO KEY UPDATE` and
//! `FOR KEY SHARE` (Django's `select_for_update(no_key=True)`, foreign-key
//! style locking) are reads; the parser gets `FOR UPDATE` / `FOR SHARE`
//! with the extra words blanked out, so every byte offset and location is
//! unchanged and edits apply to the original text.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

/// The text with `NO KEY` / `KEY` of those clauses blanked, or `None` when
/// there is none.
pub(crate) fn mask(sql: &str) -> Option<String> {
    if !sql
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"key"))
    {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let words: Vec<(&Word, usize)> = tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) => Some((w, t.span.start)),
            _ => None,
        })
        .filter_map(|(w, loc)| Some((w, offset(sql, loc.line, loc.column)?)))
        .collect();
    let is = |i: usize, kw: &str| {
        words
            .get(i)
            .is_some_and(|(w, _)| w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    };
    let mut blank = Vec::new();
    for i in 0..words.len() {
        if !is(i, "for") {
            continue;
        }
        if is(i + 1, "no") && is(i + 2, "key") && is(i + 3, "update") {
            blank.extend([i + 1, i + 2]);
        } else if is(i + 1, "key") && is(i + 2, "share") {
            blank.push(i + 1);
        }
    }
    if blank.is_empty() {
        return None;
    }
    let mut bytes = sql.as_bytes().to_vec();
    for i in blank {
        let (w, at) = words[i];
        bytes[at..at + w.value.len()].fill(b' ');
    }
    String::from_utf8(bytes).ok()
}

/// The byte offset of a 1-based (line, column-in-chars) location.
fn offset(text: &str, line: u64, column: u64) -> Option<usize> {
    let start = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)? as usize)
        .map(str::len)
        .sum::<usize>();
    let col = column.checked_sub(1)? as usize;
    text[start..]
        .char_indices()
        .nth(col)
        .map(|(i, _)| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_only_the_extra_words_of_locking_clauses() {
        let sql = "SELECT key FROM t WHERE id = 1 FOR NO KEY UPDATE OF t";
        assert_eq!(
            mask(sql).unwrap(),
            "SELECT key FROM t WHERE id = 1 FOR        UPDATE OF t"
        );
        assert_eq!(
            mask("select 1 for key share").unwrap(),
            "select 1 for     share"
        );
        assert_eq!(mask("select 'for no key update' as key"), None);
        assert_eq!(mask("select 1"), None);
    }
}
