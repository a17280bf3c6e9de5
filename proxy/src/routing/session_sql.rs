//! Session-level SQL the router follows: `SET search_path`, and SQL-level
//! `PREPARE` / `EXECUTE` / `DEALLOCATE`. Pure text inspection of simple
//! queries; statements it does not recognise are simply not followed.

use switchyard_rules::ident;

/// What a simple query does to session state the router tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION|LOCAL] search_path TO|= a, b` or
    /// `set_config('search_path', 'a, b', is_local)`; `None` for `RESET`
    /// or `DEFAULT`.
    SearchPath {
        /// The schemas, or the session default.
        schemas: Option<Vec<String>>,
        /// Only until the end of the transaction (`SET LOCAL`).
        local: bool,
    },
    /// `PREPARE name [(types)] AS ...`.
    Prepare(String),
    /// `EXECUTE name [(args)]`.
    Execute(String),
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE ALL`: every prepared statement is gone.
    DropAll,
    /// `DISCARD ALL` (what poolers send between clients): every prepared
    /// statement is gone and settings are back to the startup ones.
    DiscardAll,
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
    if !may_command(sql.as_bytes()) {
        return Vec::new();
    }
    split_statements(sql)
        .into_iter()
        .filter_map(classify)
        .collect()
}

/// Whether `sql` may hold a command above: a statement (the text's start
/// or after any `;`) that leads with `set`, `reset`, `prepare`, `execute`,
/// `deallocate` or `discard`, or `set_config` anywhere, in any case. No
/// allocation, and between those only `;` and `_` are looked for, eight
/// bytes at a time: most statements an application sends have none, and
/// this runs on every simple query.
pub(crate) fn may_command(b: &[u8]) -> bool {
    if leads_with_command(b) {
        return true;
    }
    let mut at = 0;
    while let Some(i) = next_semicolon_or_underscore(b, at) {
        let found = if b[i] == b';' {
            leads_with_command(&b[i + 1..])
        } else {
            i >= 3
                && b[i - 3..i].eq_ignore_ascii_case(b"set")
                && b.get(i + 1..i + 7)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
        };
        if found {
            return true;
        }
        at = i + 1;
    }
    false
}

/// The first `;` or `_` of `b` from `from` on.
fn next_semicolon_or_underscore(b: &[u8], from: usize) -> Option<usize> {
    switchyard_rules::swar::find(b, from, [(b';', 1), (b'_', 1)])
}

/// Whether the first word of `statement` (after blanks and `(`, and
/// conservatively after any non-ASCII byte) is a command's.
fn leads_with_command(statement: &[u8]) -> bool {
    let start = statement
        .iter()
        .position(|&b| !(b.is_ascii_whitespace() || b == b'(' || b >= 0x80))
        .unwrap_or(statement.len());
    let word = &statement[start..];
    let len = word
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(word.len());
    let word = &word[..len];
    [
        "set",
        "reset",
        "prepare",
        "execute",
        "deallocate",
        "discard",
    ]
    .iter()
    .any(|c| word.eq_ignore_ascii_case(c.as_bytes()))
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
            let local = next.eq_ignore_ascii_case("local");
            if local || next.eq_ignore_ascii_case("session") {
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
                return Some(SessionCommand::SearchPath {
                    schemas: None,
                    local,
                });
            }
            Some(SessionCommand::SearchPath {
                schemas: Some(schema_list(rest)?),
                local,
            })
        }
        "reset" => {
            let next = w.next()?;
            (next.eq_ignore_ascii_case("search_path") || next.eq_ignore_ascii_case("all"))
                .then_some(SessionCommand::SearchPath {
                    schemas: None,
                    local: false,
                })
        }
        "select" => set_config(sql),
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
            .map(|_| SessionCommand::DiscardAll),
        _ => None,
    }
}

/// `a, "B", 'c'` as folded schema names.
fn schema_list(text: &str) -> Option<Vec<String>> {
    text.split(',')
        .map(|s| ident::fold(s.trim().trim_matches('\'')))
        .collect()
}

/// `SELECT set_config('search_path', 'a, b', true|false)` with literal
/// arguments (the form ORMs and poolers send).
fn set_config(sql: &str) -> Option<SessionCommand> {
    let lower = sql.to_ascii_lowercase();
    let at = lower.find("set_config")? + "set_config".len();
    let args = sql[at..].trim_start().strip_prefix('(')?;
    let args = &args[..args.find(')')?];
    let mut parts = args.splitn(2, ',');
    let setting = parts.next()?.trim();
    if !setting.eq_ignore_ascii_case("'search_path'") {
        return None;
    }
    let rest = parts.next()?.trim();
    let value = rest.strip_prefix('\'')?;
    let end = value.find('\'')?;
    let (value, tail) = (&value[..end], &value[end + 1..]);
    let local = tail
        .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
        .to_ascii_lowercase()
        .starts_with("true");
    Some(SessionCommand::SearchPath {
        schemas: Some(schema_list(value)?),
        local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionCommand as C;

    #[test]
    fn the_prefilter_passes_every_command_and_skips_plain_statements() {
        for sql in [
            "SET search_path TO a",
            "reSet all",
            "select SET_CONFIG('search_path', 'a', false)",
            "PREPARE p AS select 1",
            "execute p",
            "DEALLOCATE ALL",
            "discard all",
            "select 1;reset search_path",
            "select pg_catalog.set_config('search_path', 'a', false)",
            "(execute p)",
        ] {
            assert!(may_command(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "",
            "s",
            "pre",
            "select offset_x, preset, x_config('search_path', 'a', false) from t",
            "update t set x = 1",
        ] {
            assert!(!may_command(sql.as_bytes()), "{sql}");
        }
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "SET",
            "reset",
            "Prepare",
            "EXECUTE",
            "deallocate",
            "DISCARD",
            "select",
            "set_config('search_path', 'a', true)",
            "search_path",
            "TO",
            "=",
            "all",
            "p",
            "a, b",
            " ",
            "\t",
            "\u{a0}",
            "(",
            ";",
            "'",
            "\"",
            "x",
            "_",
            "set_",
        ])
    }

    proptest::proptest! {
        #[test]
        fn finds_the_first_semicolon_or_underscore(s in "[a-z ]{0,30}[;_]?[a-z;_ ]{0,10}", from in 0usize..44) {
            let naive = s.bytes().enumerate().skip(from).find(|(_, c)| *c == b';' || *c == b'_');
            proptest::prop_assert_eq!(
                next_semicolon_or_underscore(s.as_bytes(), from),
                naive.map(|(i, _)| i)
            );
        }

        /// The pre-check never hides a command [`classify`] would find.
        #[test]
        fn the_prefilter_misses_no_command(pieces in proptest::collection::vec(piece(), 0..10)) {
            let sql = pieces.concat();
            let found = split_statements(&sql).into_iter().filter_map(classify).count();
            proptest::prop_assert!(found == 0 || may_command(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn follows_search_path_changes() {
        let set = |s: &[&str], local| C::SearchPath {
            schemas: Some(s.iter().map(|x| x.to_string()).collect()),
            local,
        };
        let reset = C::SearchPath {
            schemas: None,
            local: false,
        };
        assert_eq!(
            classify("SET search_path TO app, public"),
            Some(set(&["app", "public"], false))
        );
        assert_eq!(
            classify("set session search_path = \"App\""),
            Some(set(&["App"], false))
        );
        assert_eq!(
            classify("SET LOCAL search_path TO app"),
            Some(set(&["app"], true))
        );
        assert_eq!(classify("SET search_path TO DEFAULT"), Some(reset.clone()));
        assert_eq!(classify("reset all"), Some(reset.clone()));
        assert_eq!(
            classify("set search_path='a','b';"),
            Some(set(&["a", "b"], false))
        );
        assert_eq!(
            classify("SELECT set_config('search_path', 'app, public', false)"),
            Some(set(&["app", "public"], false))
        );
        assert_eq!(
            classify("select pg_catalog.set_config('search_path', '\"App\"', true)"),
            Some(set(&["App"], true))
        );
        assert_eq!(
            classify("select set_config('work_mem', '1MB', false)"),
            None
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
        assert_eq!(classify("DISCARD ALL"), Some(C::DiscardAll));
        assert_eq!(
            classify("RESET ALL"),
            Some(C::SearchPath {
                schemas: None,
                local: false
            })
        );
        assert_eq!(classify("select 1"), None);
        assert_eq!(
            classify_all("deallocate x; select ';'; RESET search_path;"),
            vec![
                C::Deallocate("x".into()),
                C::SearchPath {
                    schemas: None,
                    local: false
                }
            ]
        );
    }
}
