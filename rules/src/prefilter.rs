//! The cheap pre-filter: could this statement text name a routed table?
//!
//! It looks for each routed table's name as a whole word, ignoring ASCII
//! case (a quoted mixed-case name matches too, at worst a false positive that
//! costs one parse). A miss means the statement is forwarded unparsed.

/// Table names to look for.
#[derive(Debug, Clone, Default)]
pub struct TableFilter {
    names: Vec<Vec<u8>>,
}

impl TableFilter {
    /// A filter for these bare table names.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<Vec<u8>> = names
            .into_iter()
            .map(|n| n.to_ascii_lowercase().into_bytes())
            .collect();
        names.sort();
        names.dedup();
        TableFilter { names }
    }

    /// Whether nothing can match.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `sql` may mention one of the tables.
    pub fn may_touch(&self, sql: &str) -> bool {
        let hay = sql.as_bytes();
        self.names.iter().any(|name| contains_word(hay, name))
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn contains_word(hay: &[u8], word: &[u8]) -> bool {
    let Some(&first) = word.first() else {
        return false;
    };
    if hay.len() < word.len() {
        return false;
    }
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let last_start = hay.len() - word.len();
    let mut i = 0;
    while i <= last_start {
        let b = hay[i];
        if (b == lower || b == upper)
            && hay[i..i + word.len()].eq_ignore_ascii_case(word)
            && (i == 0 || !is_ident_byte(hay[i - 1]))
            && hay.get(i + word.len()).is_none_or(|&b| !is_ident_byte(b))
        {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_words_in_any_case() {
        let f = TableFilter::new(["users"]);
        assert!(f.may_touch("select * from users"));
        assert!(f.may_touch("SELECT * FROM public.\"USERS\" u"));
        assert!(f.may_touch("insert into Users(email) values ($1)"));
        assert!(!f.may_touch("select * from users_archive"));
        assert!(!f.may_touch("select * from superusers"));
        assert!(!f.may_touch("select 1"));
        assert!(!TableFilter::new([]).may_touch("select * from users"));
    }
}
