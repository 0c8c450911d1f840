//! The defined cohorts of a new experiment version (§5): which stored
//! cohorts are kept (and updated), which are created, which are removed,
//! and when the change must be refused because it would strand members.

use super::CohortDef;

/// A stored cohort that carries an alias: a defined cohort or one of its
/// overflows, with its members (assigned + pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCohort {
    pub id: String,
    pub alias: String,
    /// The defined cohort this one overflows, if it is an overflow.
    pub overflow_of: Option<String>,
    pub members: u64,
}

/// What storing a version's cohort definitions does.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortSync<'a> {
    /// Aliases no longer defined: their cohorts (overflows first) go.
    pub removed: Vec<String>,
    /// Defined cohorts kept, by id, with their new definition (their
    /// overflows take its description and capacity).
    pub kept: Vec<(String, &'a CohortDef)>,
    /// Definitions with no cohort yet: created, in this order.
    pub created: Vec<&'a CohortDef>,
}

/// Plans the change from the `stored` cohorts to `defs`. Removing a cohort
/// that has members, or lowering a capacity below a cohort's members, is
/// refused with a sentence saying which.
pub fn sync<'a>(stored: &[StoredCohort], defs: &'a [CohortDef]) -> Result<CohortSync<'a>, String> {
    let defined = |alias: &str| defs.iter().find(|d| d.alias.as_str() == alias);
    for c in stored {
        match defined(&c.alias) {
            None if c.members > 0 => {
                return Err(format!(
                    "cohort {:?} ({}) has {} member(s) and cannot be removed",
                    c.alias, c.id, c.members
                ))
            }
            Some(CohortDef {
                capacity: Some(cap),
                ..
            }) if c.members > u64::from(*cap) => {
                return Err(format!(
                    "cohort {:?} ({}) has {} member(s), more than the new capacity {cap}",
                    c.alias, c.id, c.members
                ))
            }
            _ => {}
        }
    }
    let mut removed: Vec<String> = Vec::new();
    for c in stored {
        if defined(&c.alias).is_none() && !removed.contains(&c.alias) {
            removed.push(c.alias.clone());
        }
    }
    let mut kept = Vec::new();
    let mut created = Vec::new();
    for def in defs {
        let own = stored
            .iter()
            .find(|c| c.alias == def.alias.as_str() && c.overflow_of.is_none());
        match own {
            Some(c) => kept.push((c.id.clone(), def)),
            None => created.push(def),
        }
    }
    Ok(CohortSync {
        removed,
        kept,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Key;

    fn def(alias: &str, capacity: Option<u32>) -> CohortDef {
        CohortDef {
            alias: Key::parse(alias).unwrap(),
            name: alias.to_uppercase(),
            description: String::new(),
            capacity,
        }
    }

    fn stored(id: &str, alias: &str, overflow_of: Option<&str>, members: u64) -> StoredCohort {
        StoredCohort {
            id: id.into(),
            alias: alias.into(),
            overflow_of: overflow_of.map(Into::into),
            members,
        }
    }

    #[test]
    fn kept_created_and_removed() {
        let defs = [def("a", Some(5)), def("c", None)];
        let now = [
            stored("1", "a", None, 3),
            stored("2", "a", Some("1"), 5),
            stored("3", "b", None, 0),
            stored("4", "b", Some("3"), 0),
        ];
        let plan = sync(&now, &defs).unwrap();
        assert_eq!(plan.removed, vec!["b".to_owned()]);
        assert_eq!(plan.kept, vec![("1".to_owned(), &defs[0])]);
        assert_eq!(plan.created, vec![&defs[1]]);
    }

    #[test]
    fn members_are_never_stranded() {
        let members_in_overflow = [stored("1", "a", None, 0), stored("2", "a", Some("1"), 1)];
        let error = sync(&members_in_overflow, &[]).unwrap_err();
        assert!(
            error.contains("\"a\" (2) has 1 member(s) and cannot be removed"),
            "{error}"
        );

        let full = [stored("1", "a", None, 4), stored("2", "a", Some("1"), 6)];
        let error = sync(&full, &[def("a", Some(5))]).unwrap_err();
        assert!(error.contains("more than the new capacity 5"), "{error}");
        assert!(sync(&full, &[def("a", Some(6))]).is_ok());
        assert!(sync(&full, &[def("a", None)]).is_ok());
    }
}
