//! PostgreSQL identifier folding and quoting.

/// Quotes an identifier when PostgreSQL would not read it back unchanged.
pub fn quote(ident: &str) -> String {
    let plain = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain && !is_reserved(ident) {
        ident.to_owned()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// The name of index (or constraint) `name` moved from column `from` to
/// `to`, within PostgreSQL's 63-byte limit: how the backfill names the
/// indexes it rebuilds, and contract the constraints it moves.
pub fn renamed(name: &str, from: &str, to: &str) -> String {
    let name = if name.contains(from) {
        name.replacen(from, to, 1)
    } else {
        format!("{name}_{to}")
    };
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn is_reserved(word: &str) -> bool {
    // Reserved words that are plausible column names.
    matches!(
        word,
        "all"
            | "and"
            | "any"
            | "as"
            | "asc"
            | "both"
            | "case"
            | "check"
            | "column"
            | "constraint"
            | "default"
            | "desc"
            | "distinct"
            | "do"
            | "else"
            | "end"
            | "for"
            | "from"
            | "group"
            | "having"
            | "in"
            | "limit"
            | "not"
            | "null"
            | "offset"
            | "on"
            | "only"
            | "or"
            | "order"
            | "primary"
            | "references"
            | "select"
            | "table"
            | "then"
            | "to"
            | "user"
            | "using"
            | "when"
            | "where"
            | "with"
            | "window"
            | "returning"
            | "unique"
    )
}

/// Folds one identifier as written: unquoted to lower case, quoted verbatim.
pub fn fold(written: &str) -> Option<String> {
    if let Some(inner) = written.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        Some(inner.replace("\"\"", "\""))
    } else if written.is_empty() {
        None
    } else {
        Some(written.to_lowercase())
    }
}

/// Splits `a."B".c` into folded parts.
pub fn split_qualified(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                current.push_str("\"\"");
                chars.next();
            }
            '"' => {
                in_quotes = !in_quotes;
                current.push('"');
            }
            '.' if !in_quotes => parts.push(fold(&std::mem::take(&mut current))?),
            c => current.push(c),
        }
    }
    if in_quotes {
        return None;
    }
    parts.push(fold(&current)?);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        assert_eq!(quote("email"), "email");
        assert_eq!(quote("Email"), "\"Email\"");
        assert_eq!(quote("user"), "\"user\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            split_qualified("public.\"a.b\""),
            Some(vec!["public".into(), "a.b".into()])
        );
        assert_eq!(split_qualified("\"open"), None);
    }
}
