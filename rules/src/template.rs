//! `forward` and `backward` expressions as templates: SQL text with holes
//! where a source column is referenced, filled per statement with the
//! value being written (or the column reference being read). A split or
//! merge reads several source columns: each hole knows which one.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A SQL expression over its source columns, ready to be instantiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A reference to the source column of this index.
    Hole(usize),
}

/// Why an expression cannot serve as a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The tokenizer refused the text.
    #[error("cannot read expression {expr:?}: {reason}")]
    Tokenize {
        /// The expression.
        expr: String,
        /// Tokenizer message.
        reason: String,
    },
    /// The expression references none of its source columns.
    #[error("expression {expr:?} does not reference column {column:?}")]
    NoReference {
        /// The expression.
        expr: String,
        /// The column it should read.
        column: String,
    },
}

impl Template {
    /// Compiles `expr`, whose references to `column` become holes. A
    /// reference is the bare word (case-insensitive) or its quoted form;
    /// qualified references (`t.column`) count too, qualifier and all.
    pub fn compile(expr: &str, column: &str) -> Result<Self, TemplateError> {
        Template::compile_over(expr, &[column])
    }

    /// Compiles `expr` over several source columns (a split or merge): a
    /// reference to `columns[i]` becomes hole `i`. At least one must be
    /// referenced.
    pub fn compile_over(expr: &str, columns: &[&str]) -> Result<Self, TemplateError> {
        let dialect = PostgreSqlDialect {};
        let tokens =
            Tokenizer::new(&dialect, expr)
                .tokenize()
                .map_err(|e| TemplateError::Tokenize {
                    expr: expr.to_owned(),
                    reason: e.to_string(),
                })?;
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut holes = 0;
        let mut i = 0;
        while i < tokens.len() {
            let is_ref = |t: &Token| match t {
                Token::Word(w) => columns.iter().position(|c| match w.quote_style {
                    Some('"') => w.value == *c,
                    None => w.value.to_lowercase() == *c,
                    _ => false,
                }),
                _ => None,
            };
            // Skip a qualifier in `alias.column`.
            if let (Token::Word(_), Some(Token::Period), Some(next)) =
                (&tokens[i], tokens.get(i + 1), tokens.get(i + 2))
            {
                if let Some(hole) =
                    is_ref(next).filter(|_| !matches!(tokens.get(i + 3), Some(Token::LParen)))
                {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                    parts.push(Part::Hole(hole));
                    holes += 1;
                    i += 3;
                    continue;
                }
            }
            let preceded_by_period = i > 0 && matches!(tokens[i - 1], Token::Period);
            let followed_by_call = matches!(tokens.get(i + 1), Some(Token::LParen));
            let hole = is_ref(&tokens[i]).filter(|_| !preceded_by_period && !followed_by_call);
            if let Some(hole) = hole {
                parts.push(Part::Text(std::mem::take(&mut text)));
                parts.push(Part::Hole(hole));
                holes += 1;
            } else {
                text.push_str(&tokens[i].to_string());
            }
            i += 1;
        }
        if holes == 0 {
            return Err(TemplateError::NoReference {
                expr: expr.to_owned(),
                column: columns.join(", "),
            });
        }
        parts.push(Part::Text(text));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template { parts })
    }

    /// The expression with every hole replaced by `(value)` (for a
    /// template over one column).
    pub fn fill(&self, value: &str) -> String {
        self.fill_with(|_| value)
    }

    /// The expression with hole `i` replaced by `(values[i])`; a hole
    /// without a value gets `NULL`.
    pub fn fill_each<S: AsRef<str>>(&self, values: &[S]) -> String {
        self.fill_with(|i| values.get(i).map(AsRef::as_ref).unwrap_or("NULL"))
    }

    fn fill_with<'v>(&self, value: impl Fn(usize) -> &'v str) -> String {
        let mut out = String::with_capacity(64);
        out.push('(');
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Hole(i) => {
                    out.push('(');
                    out.push_str(value(*i));
                    out.push(')');
                }
            }
        }
        out.push(')');
        out
    }

    /// Whether the expression references source column `i`.
    pub fn reads(&self, i: usize) -> bool {
        self.parts.contains(&Part::Hole(i))
    }

    /// The text with every hole replaced by `ident` verbatim (no
    /// parentheses): renames a column in a fragment such as an index
    /// definition, where `(col)` and `((col))` differ.
    pub fn splice(&self, ident: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Hole(_) => ident,
            })
            .collect()
    }

    /// The text with hole `i` replaced by `values[i]` verbatim (see
    /// [`Template::splice`]); a hole without a value gets `NULL`.
    pub fn splice_each<S: AsRef<str>>(&self, values: &[S]) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Hole(i) => values.get(*i).map(AsRef::as_ref).unwrap_or("NULL"),
            })
            .collect()
    }

    /// For a template with exactly one hole: the text before and after the
    /// value, so that `fill(v) == before + v + after`.
    pub fn around(&self) -> Option<(String, String)> {
        let holes = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Hole(_)))
            .count();
        if holes != 1 {
            return None;
        }
        let mut before = String::from("(");
        let mut after = String::new();
        let mut seen = false;
        for part in &self.parts {
            match part {
                Part::Text(t) if seen => after.push_str(t),
                Part::Text(t) => before.push_str(t),
                Part::Hole(_) => {
                    before.push('(');
                    after.push(')');
                    seen = true;
                }
            }
        }
        after.push(')');
        Some((before, after))
    }

    /// Whether the template is the bare column (an identity mapping).
    pub fn is_identity(&self) -> bool {
        self.parts == [Part::Hole(0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_reference() {
        let t = Template::compile("lower(email) || Email", "email").unwrap();
        assert_eq!(t.fill("$1::text"), "(lower(($1::text)) || ($1::text))");
    }

    #[test]
    fn ignores_functions_qualified_names_and_strings() {
        let t = Template::compile("coalesce(x.status, 'status')::text", "status").unwrap();
        assert_eq!(t.fill("s"), "(coalesce((s), 'status')::text)");
        assert!(Template::compile("now()", "email").is_err());
    }

    #[test]
    fn single_hole_templates_split_around_the_value() {
        let t = Template::compile("lower(email)", "email").unwrap();
        let (before, after) = t.around().unwrap();
        assert_eq!(format!("{before}v{after}"), t.fill("v"));
        assert!(Template::compile("email || email", "email")
            .unwrap()
            .around()
            .is_none());
    }

    #[test]
    fn splice_renames_without_parentheses() {
        let t = Template::compile(
            "btree (email, lower(email)) WHERE (email IS NOT NULL)",
            "email",
        )
        .unwrap();
        assert_eq!(
            t.splice("email_address"),
            "btree (email_address, lower(email_address)) WHERE (email_address IS NOT NULL)"
        );
    }

    #[test]
    fn holes_know_their_column() {
        let t = Template::compile_over("first || ' ' || \"Last\"", &["first", "Last"]).unwrap();
        assert_eq!(t.fill_each(&["a", "b"]), "((a) || ' ' || (b))");
        assert!(t.reads(0) && t.reads(1) && !t.reads(2));
        let t = Template::compile_over("split_part(full, ' ', 2)", &["full"]).unwrap();
        assert_eq!(t.fill_each::<&str>(&[]), "(split_part((NULL), ' ', 2))");
        assert!(Template::compile_over("now()", &["a", "b"]).is_err());
    }

    #[test]
    fn quoted_references_match_exactly() {
        let t = Template::compile("\"Email\" || email", "Email").unwrap();
        assert_eq!(t.fill("v"), "((v) || email)");
        assert!(Template::compile("status", "status").unwrap().is_identity());
    }
}
