//! A linear, non-recursive lexical scan of SQL text, PostgreSQL's rules:
//! strings (`'..'` with `''`, `E'..'` with backslashes), quoted
//! identifiers, dollar quoting, nested comments, parameters. It gives the
//! significant tokens with their byte ranges (comments and blanks left
//! out), and bounds on what parsing the text will cost, so that a caller
//! can decide, before any recursion, where (or whether) to parse it.

/// What a token is, as far as the scan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `(` or `[`.
    Open,
    /// `)` or `]`.
    Close,
    /// `,`.
    Comma,
    /// `;`.
    Semicolon,
    /// An operator (`+`, `||`, `=`, `::`, ...).
    Operator,
    /// A word: keyword or unquoted identifier.
    Word,
    /// A quoted identifier.
    Quoted,
    /// A string, number or parameter.
    Literal,
    /// `.` and anything else.
    Other,
}

/// One significant token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Byte range in the text.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// What it is.
    pub kind: Kind,
}

/// The tokens of a text and what parsing it may cost.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Significant tokens, in order.
    pub tokens: Vec<Token>,
    /// The nesting depth at each token (an opening or closing bracket
    /// counts as outside its group).
    pub depths: Vec<u32>,
    /// Deepest nesting of parentheses and brackets.
    pub max_depth: usize,
    /// Deepest nesting of `CASE ... END`.
    pub max_case: usize,
    /// Longest run of operators (and `AND`/`OR`) at one nesting level
    /// between list separators: the depth of a left-deep operator chain.
    pub max_chain: usize,
}

/// Stack a parse and rewrite may need per level, from measurements of the
/// release build (bench/RESULTS.md): the costliest form of each.
const PER_PAREN: usize = 48 * 1024;
const PER_CASE: usize = 8 * 1024;
const PER_OPERATOR: usize = 1024;
const BASE: usize = 64 * 1024;

/// Unoptimised builds (the tests) use about ten times the stack per level.
const BUILD_FACTOR: usize = if cfg!(debug_assertions) { 16 } else { 1 };

impl Scan {
    /// The stack parsing and rewriting this text may need, at most.
    pub fn stack_bound(&self) -> usize {
        let levels = self
            .max_depth
            .saturating_mul(PER_PAREN)
            .saturating_add(self.max_case.saturating_mul(PER_CASE))
            .saturating_add(self.max_chain.saturating_mul(PER_OPERATOR));
        BASE.saturating_add(levels.saturating_mul(BUILD_FACTOR))
    }

    /// Where an expression that starts at byte `start` and reaches at least
    /// byte `reaches` must end: the first list separator (`,`, `;`) at its
    /// nesting level, or the end of its enclosing group, after `reaches`.
    pub fn bound(&self, start: usize, reaches: usize) -> Option<usize> {
        let first = self.tokens.partition_point(|t| t.start < start);
        let level = *self.depths.get(first)?;
        let from = self
            .tokens
            .partition_point(|t| t.start < reaches)
            .max(first);
        (from..self.tokens.len())
            .find(|&j| {
                let (t, d) = (&self.tokens[j], self.depths[j]);
                d < level || (d == level && matches!(t.kind, Kind::Comma | Kind::Semicolon))
            })
            .map(|j| self.tokens[j].start)
    }

    /// Whether `word` occurs as a word outside comments and strings (case
    /// folded, or exactly as a quoted identifier).
    pub fn mentions(&self, text: &str, word: &str) -> bool {
        self.tokens.iter().any(|t| match t.kind {
            Kind::Word => text[t.start..t.end].eq_ignore_ascii_case(word),
            Kind::Quoted => text[t.start + 1..t.end - 1] == *word,
            _ => false,
        })
    }
}

/// Scans `text`.
pub fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let mut s = Scan::default();
    // Per open nesting level: the operator run since its last separator.
    let mut chains: Vec<usize> = vec![0];
    let mut case = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr(b'\n', b, i).map_or(b.len(), |p| p + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment(b, i);
                continue;
            }
            b'\'' => {
                i = quoted(b, i + 1, b'\'', false);
                Kind::Literal
            }
            b'"' => {
                i = quoted(b, i + 1, b'"', false);
                Kind::Quoted
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') => {
                i = quoted(b, i + 2, b'\'', true);
                Kind::Literal
            }
            b'$' => match dollar(b, i) {
                Some(end) => {
                    i = end;
                    Kind::Literal
                }
                None => {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    Kind::Literal
                }
            },
            b'(' | b'[' => {
                i += 1;
                Kind::Open
            }
            b')' | b']' => {
                i += 1;
                Kind::Close
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b';' => {
                i += 1;
                Kind::Semicolon
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                Kind::Literal
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                Kind::Word
            }
            c if is_operator_char(c) => {
                while i < b.len()
                    && is_operator_char(b[i])
                    && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                    && !(b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
                {
                    i += 1;
                }
                Kind::Operator
            }
            b':' => {
                i += if b.get(i + 1) == Some(&b':') { 2 } else { 1 };
                Kind::Operator
            }
            _ => {
                // One whole character (UTF-8 continuation bytes included).
                i += 1;
                while i < b.len() && (b[i] & 0xC0) == 0x80 {
                    i += 1;
                }
                Kind::Other
            }
        };
        let token = Token {
            start,
            end: i.min(b.len()),
            kind,
        };
        let depth = (chains.len() - 1) as u32;
        s.depths.push(if kind == Kind::Close {
            depth.saturating_sub(1)
        } else {
            depth
        });
        match kind {
            Kind::Open => {
                chains.push(0);
                s.max_depth = s.max_depth.max(chains.len() - 1);
            }
            Kind::Close if chains.len() > 1 => {
                chains.pop();
            }
            Kind::Comma | Kind::Semicolon => {
                if let Some(run) = chains.last_mut() {
                    *run = 0;
                }
                if kind == Kind::Semicolon {
                    case = 0;
                }
            }
            Kind::Operator => bump(&mut chains, &mut s.max_chain),
            Kind::Word => {
                let w = &text[token.start..token.end];
                if w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or") {
                    bump(&mut chains, &mut s.max_chain);
                } else if w.eq_ignore_ascii_case("case") {
                    case += 1;
                    s.max_case = s.max_case.max(case);
                } else if w.eq_ignore_ascii_case("end") {
                    case = case.saturating_sub(1);
                }
            }
            _ => {}
        }
        s.tokens.push(token);
    }
    s
}

fn bump(chains: &mut [usize], max: &mut usize) {
    if let Some(run) = chains.last_mut() {
        *run += 1;
        *max = (*max).max(*run);
    }
}

fn is_operator_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

fn memchr(c: u8, b: &[u8], from: usize) -> Option<usize> {
    b[from..].iter().position(|&x| x == c).map(|p| from + p)
}

/// The end of a `/* ... */` comment starting at `i` (comments nest).
pub(crate) fn block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The end of a quoted run opened just before `i`, the quote doubled
/// inside; with `backslash`, `\x` escapes a character too.
pub(crate) fn quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The end of a dollar-quoted string starting at `i`, if `$tag$` opens one.
pub(crate) fn dollar(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if j < b.len() && b[j].is_ascii_digit() {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let mut k = body;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return Some(k + tag.len());
        }
        k += 1;
    }
    Some(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(&str, Kind)> {
        scan(text)
            .tokens
            .iter()
            .map(|t| (&text[t.start..t.end], t.kind))
            .collect()
    }

    #[test]
    fn strings_comments_and_dollar_quotes_are_single_or_gone() {
        use Kind::*;
        assert_eq!(
            kinds("select 'a''b', E'c\\'d', $x$ ) $y$ $x$, $1 /* users /* nested */ */ -- users\nfrom \"Odd\"\"Name\""),
            vec![
                ("select", Word),
                ("'a''b'", Literal),
                (",", Comma),
                ("E'c\\'d'", Literal),
                (",", Comma),
                ("$x$ ) $y$ $x$", Literal),
                (",", Comma),
                ("$1", Literal),
                ("from", Word),
                ("\"Odd\"\"Name\"", Quoted),
            ]
        );
        let s = scan("/* users */ select 1 -- users\n");
        assert!(!s.mentions("/* users */ select 1 -- users\n", "users"));
        assert!(scan("select * from Users").mentions("select * from Users", "users"));
    }

    #[test]
    fn an_expression_ends_at_its_list_separator_or_group() {
        let text = "insert into t values (lower('a'), f(1, 2), 3), (4)";
        let s = scan(text);
        let at = text.find("lower").unwrap();
        assert_eq!(&text[at..s.bound(at, at + 5).unwrap()], "lower('a')");
        let at = text.find("f(").unwrap();
        assert_eq!(&text[at..s.bound(at, at + 1).unwrap()], "f(1, 2)");
        let at = text.find('3').unwrap();
        assert_eq!(&text[at..s.bound(at, at).unwrap()], "3");
        assert_eq!(s.bound(text.len(), text.len()), None);
    }

    #[test]
    fn depth_case_and_chains_bound_what_parsing_costs() {
        let s = scan("select ((1)), case when case when x then 1 end then 2 end, 1+2+3 from t where a = 1 and b = 2");
        assert_eq!((s.max_depth, s.max_case), (2, 2));
        assert_eq!(s.max_chain, 5);
        // A VALUES list is wide, not deep.
        let rows = vec!["(1, 'a' || 'b', 3)"; 1000].join(", ");
        let s = scan(&format!("insert into t values {rows}"));
        assert_eq!((s.max_depth, s.max_chain), (1, 1));
        assert!(s.stack_bound() < 256 * 1024 * BUILD_FACTOR);
        let deep = format!("select {}1{}", "(".repeat(100), ")".repeat(100));
        assert!(scan(&deep).stack_bound() > 2 * 1024 * 1024);
    }
}
