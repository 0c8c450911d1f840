//! `If-Match` (§1 "Versions"): a write may name the version it was
//! made against; a stale one changes nothing.

use std::fmt;

/// What an `If-Match` header asks of the current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `*`: the entity must exist, whatever its version.
    Exists,
    /// A list of entity tags: the current version must be one of them. Tags
    /// that are not a version allot could have issued are kept as `None`, so
    /// they can never match.
    AnyOf(Vec<Option<i64>>),
}

impl Precondition {
    /// Parses a header value: `*`, or entity tags (`"3"`, `W/"3"`, `3`),
    /// comma-separated. `None` for a value that is neither.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw == "*" {
            return Some(Self::Exists);
        }
        let mut tags = Vec::new();
        for tag in raw.split(',') {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let quoted = tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"');
            let inner = if quoted { &tag[1..tag.len() - 1] } else { tag };
            if inner.contains('"') || inner.is_empty() && !quoted {
                return None;
            }
            let all_digits = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit());
            match (all_digits, quoted) {
                // A number too large for a version can never be current.
                (true, _) => tags.push(inner.parse::<i64>().ok()),
                // A quoted tag allot never issued: a valid header that cannot match.
                (false, true) => tags.push(None),
                // Unquoted text is not an entity tag at all.
                (false, false) => return None,
            }
        }
        Some(Self::AnyOf(tags))
    }

    /// Does the entity's current version (`None`: it does not exist) satisfy it?
    pub fn admits(&self, current: Option<i64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Self::Exists, Some(_)) => true,
            (Self::AnyOf(tags), Some(v)) => tags.contains(&Some(v)),
        }
    }
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exists => f.write_str("*"),
            Self::AnyOf(tags) => {
                let shown: Vec<String> = tags
                    .iter()
                    .map(|t| t.map_or_else(|| "\"?\"".to_owned(), |v| format!("\"{v}\"")))
                    .collect();
                f.write_str(&shown.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_quoted_weak_or_bare_are_understood() {
        for raw in ["\"3\"", "3", "W/\"3\"", " \"3\" "] {
            let p = Precondition::parse(raw).unwrap();
            assert!(p.admits(Some(3)), "{raw}");
            assert!(!p.admits(Some(4)), "{raw}");
            assert!(!p.admits(None), "{raw}");
        }
    }

    #[test]
    fn a_star_asks_only_that_the_entity_exists() {
        let p = Precondition::parse("*").unwrap();
        assert!(p.admits(Some(1)) && p.admits(Some(99)));
        assert!(!p.admits(None));
    }

    #[test]
    fn a_list_matches_any_of_its_versions() {
        let p = Precondition::parse("\"1\", \"4\"").unwrap();
        assert!(p.admits(Some(4)) && p.admits(Some(1)) && !p.admits(Some(2)));
    }

    #[test]
    fn tags_allot_never_issued_never_match_and_garbage_is_refused() {
        for raw in [
            "\"abc\"",
            "\"99999999999999999999\"",
            "99999999999999999999",
        ] {
            let p = Precondition::parse(raw).unwrap();
            assert!(!p.admits(Some(1)), "{raw}");
        }
        for raw in ["", "not-a-version", "\"3", "1,", "\"a\"b\""] {
            assert_eq!(Precondition::parse(raw), None, "{raw:?}");
        }
    }
}
