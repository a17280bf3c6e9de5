//! Session-level SQL the router follows: `SET search_path`, and SQL-level
//! `PREPARE` / `EXECUTE` / `DEALLOCATE`. Pure text inspection of simple
//! queries; statements it does not recognise are simply not followed.

use switchyard_rules::ident;

/// What a simple query does to session state the router tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] search_path TO|= a, b`; `None` for `RESET` or `DEFAULT`.
    SearchPath(Option<Vec<String>>),
    /// `PREPARE name [(types)] AS ...`.
    Prepare(String),
    /// `EXECUTE name [(args)]`.
    Execute(String),
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement is gone.
    DropAll,
}

fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
}

fn name(word: Option<&str>) -> Option<String> {
    ident::fold(word?.trim_end_matches(','))
}

/// The commands of every statement in a query string.
pub fn classify_all(sql: &str) -> Vec<SessionCommand> {
    split_statements(sql)
        .into_iter()
        .filter_map(classify)
        .collect()
}

/// Splits at `;` outside quotes; a string with dollar quoting is taken whole.
fn split_statements(sql: &str) -> Vec<&str> {
    if sql.contains('$') {
        return vec![sql];
    }
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in sql.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Recognises the commands above in one statement.
pub fn classify(sql: &str) -> Option<SessionCommand> {
    let mut w = words(sql);
    let first = w.next()?.to_ascii_lowercase();
    match first.as_str() {
        "set" => {
            let mut next = w.next()?;
            if next.eq_ignore_ascii_case("session") {
                next = w.next()?;
            }
            if !next.to_ascii_lowercase().starts_with("search_path") {
                return None;
            }
            let at = sql.to_ascii_lowercase().find("search_path")? + "search_path".len();
            let mut rest = sql[at..].trim_start();
            rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
            if rest.len() > 2
                && rest[..2].eq_ignore_ascii_case("to")
                && rest[2..].starts_with(char::is_whitespace)
            {
                rest = rest[2..].trim_start();
            }
            let rest = rest.split(';').next()?.trim();
            if rest.eq_ignore_ascii_case("default") {
                return Some(SessionCommand::SearchPath(None));
            }
            let schemas = rest
                .split(',')
                .map(|s| ident::fold(s.trim().trim_matches('\'')))
                .collect::<Option<Vec<String>>>()?;
            Some(SessionCommand::SearchPath(Some(schemas)))
        }
        "reset" => {
            let next = w.next()?;
            (next.eq_ignore_ascii_case("search_path") || next.eq_ignore_ascii_case("all"))
                .then_some(SessionCommand::SearchPath(None))
        }
        "prepare" => Some(SessionCommand::Prepare(name(w.next())?)),
        "execute" => Some(SessionCommand::Execute(name(w.next())?)),
        "deallocate" => {
            let mut next = w.next()?;
            if next.eq_ignore_ascii_case("prepare") {
                next = w.next()?;
            }
            if next.eq_ignore_ascii_case("all") {
                Some(SessionCommand::DropAll)
            } else {
                Some(SessionCommand::Deallocate(name(Some(next))?))
            }
        }
        "discard" => w
            .next()
            .filter(|n| n.eq_ignore_ascii_case("all"))
            .map(|_| SessionCommand::DropAll),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionCommand as C;

    #[test]
    fn follows_search_path_changes() {
        assert_eq!(
            classify("SET search_path TO app, public"),
            Some(C::SearchPath(Some(vec!["app".into(), "public".into()])))
        );
        assert_eq!(
            classify("set session search_path = \"App\""),
            Some(C::SearchPath(Some(vec!["App".into()])))
        );
        assert_eq!(
            classify("SET search_path TO DEFAULT"),
            Some(C::SearchPath(None))
        );
        assert_eq!(classify("reset all"), Some(C::SearchPath(None)));
        assert_eq!(
            classify("set search_path='a','b';"),
            Some(C::SearchPath(Some(vec!["a".into(), "b".into()])))
        );
        assert_eq!(classify("set work_mem = '1MB'"), None);
    }

    #[test]
    fn follows_sql_level_prepared_statements() {
        assert_eq!(
            classify("PREPARE ins(text) AS insert into t values ($1)"),
            Some(C::Prepare("ins".into()))
        );
        assert_eq!(classify("execute Ins('x')"), Some(C::Execute("ins".into())));
        assert_eq!(
            classify("DEALLOCATE PREPARE ins"),
            Some(C::Deallocate("ins".into()))
        );
        assert_eq!(classify("deallocate all"), Some(C::DropAll));
        assert_eq!(classify("DISCARD ALL"), Some(C::DropAll));
        assert_eq!(classify("select 1"), None);
        assert_eq!(
            classify_all("deallocate x; select ';'; RESET search_path;"),
            vec![C::Deallocate("x".into()), C::SearchPath(None)]
        );
    }
}
