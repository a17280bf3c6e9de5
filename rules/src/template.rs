//! `forward` and `backward` expressions as templates: SQL text with holes
//! where the source column is referenced, filled per statement with the
//! value being written (or the column reference being read).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A SQL expression over one column, ready to be instantiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Hole,
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
    /// The expression does not reference its source column.
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
                Token::Word(w) => match w.quote_style {
                    Some('"') => w.value == column,
                    None => w.value.to_lowercase() == column,
                    _ => false,
                },
                _ => false,
            };
            // Skip a qualifier in `alias.column`.
            if let (Token::Word(_), Some(Token::Period), Some(next)) =
                (&tokens[i], tokens.get(i + 1), tokens.get(i + 2))
            {
                if is_ref(next) && !matches!(tokens.get(i + 3), Some(Token::LParen)) {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                    parts.push(Part::Hole);
                    holes += 1;
                    i += 3;
                    continue;
                }
            }
            let preceded_by_period = i > 0 && matches!(tokens[i - 1], Token::Period);
            let followed_by_call = matches!(tokens.get(i + 1), Some(Token::LParen));
            if is_ref(&tokens[i]) && !preceded_by_period && !followed_by_call {
                parts.push(Part::Text(std::mem::take(&mut text)));
                parts.push(Part::Hole);
                holes += 1;
            } else {
                text.push_str(&tokens[i].to_string());
            }
            i += 1;
        }
        if holes == 0 {
            return Err(TemplateError::NoReference {
                expr: expr.to_owned(),
                column: column.to_owned(),
            });
        }
        parts.push(Part::Text(text));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template { parts })
    }

    /// The expression with every hole replaced by `(value)`.
    pub fn fill(&self, value: &str) -> String {
        let mut out = String::with_capacity(64);
        out.push('(');
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Hole => {
                    out.push('(');
                    out.push_str(value);
                    out.push(')');
                }
            }
        }
        out.push(')');
        out
    }

    /// The text with every hole replaced by `ident` verbatim (no
    /// parentheses): renames a column in a fragment such as an index
    /// definition, where `(col)` and `((col))` differ.
    pub fn splice(&self, ident: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Hole => ident,
            })
            .collect()
    }

    /// For a template with exactly one hole: the text before and after the
    /// value, so that `fill(v) == before + v + after`.
    pub fn around(&self) -> Option<(String, String)> {
        let holes = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Hole))
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
                Part::Hole => {
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
        self.parts == [Part::Hole]
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
    fn quoted_references_match_exactly() {
        let t = Template::compile("\"Email\" || email", "Email").unwrap();
        assert_eq!(t.fill("v"), "((v) || email)");
        assert!(Template::compile("status", "status").unwrap().is_identity());
    }
}
