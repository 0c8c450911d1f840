//! Keys and ids as validated newtypes ("parse, don't validate").
//!
//! A [`Key`] names flags, experiments, treatments, cohorts and variables; an
//! [`Id`] names an organization, a unit of work or a participant. Once a value
//! has one of these types it is known to satisfy the rules of §1.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde_json::Value;

/// Longest key accepted (characters; keys are ASCII so also bytes).
pub const MAX_KEY_LEN: usize = 200;
/// Longest org, unit or participant id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// 1–200 characters of `A–Z a–z 0–9 . _ : -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,200}$", example = "code-review")]
pub struct Key(String);

/// As the string it is, so messages quote a key as `"code-review"`.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Key {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_KEY_LEN {
            return Err(format!("must be 1 to {MAX_KEY_LEN} characters long"));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!(
                "must contain only A-Z a-z 0-9 . _ : - (found {bad:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses a key held in a JSON document.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Self::parse(s),
            _ => Err("must be a string key".to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An id of a `K` (an [`Org`], a [`Unit`] or a [`Participant`]): a string
/// of 1–256 bytes, or a non-negative integer which stands for its decimal
/// string (`42` ≡ `"42"`). The kinds are distinct types, so an org id cannot
/// be passed where a unit id is meant.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Id<K> {
    raw: String,
    #[serde(skip)]
    kind: PhantomData<K>,
}

/// The kind of an organization's id.
#[derive(Debug)]
pub enum Org {}
/// The kind of a unit's (a pull request's) id.
#[derive(Debug)]
pub enum Unit {}
/// The kind of a study participant's id.
#[derive(Debug)]
pub enum Participant {}

pub type OrgId = Id<Org>;
pub type UnitId = Id<Unit>;
pub type ParticipantId = Id<Participant>;

impl<K> Id<K> {
    fn new(raw: String) -> Self {
        Self {
            raw,
            kind: PhantomData,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_ID_BYTES {
            return Err(format!("must be 1 to {MAX_ID_BYTES} bytes long"));
        }
        Ok(Self::new(raw.to_owned()))
    }

    pub fn from_json(value: &Value) -> Result<Self, String> {
        const WANT: &str = "must be a string of 1 to 256 bytes or a non-negative integer";
        match value {
            Value::String(s) => Self::parse(s).map_err(|_| WANT.to_owned()),
            // `42.0` is the integer 42 to JSON Schema and to many JSON
            // writers, so it is the id "42" too.
            Value::Number(_) => match super::limits::whole_number(value, 0, u64::MAX) {
                Some(n) => Ok(Self::new(n.to_string())),
                None => Err(WANT.to_owned()),
            },
            _ => Err(WANT.to_owned()),
        }
    }

    pub fn from_json_owned(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(Self::new(s)),
            other => Self::from_json(&other),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn into_string(self) -> String {
        self.raw
    }
}

// By hand: derived impls would ask the same of the kind marker.
impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self::new(self.raw.clone())
    }
}

impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<K> Eq for Id<K> {}

impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.raw, f)
    }
}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_accept_the_documented_alphabet() {
        assert!(Key::parse("organizations:code-review-experiments-enabled").is_ok());
        assert!(Key::parse("a.B_9:-").is_ok());
        assert!(Key::parse(&"k".repeat(200)).is_ok());
    }

    #[test]
    fn keys_refuse_everything_else() {
        for bad in ["", "has space", "slash/", "é", "emoji🙂", &"k".repeat(201)] {
            assert!(Key::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn integer_ids_mean_their_decimal_string() {
        assert_eq!(
            OrgId::from_json(&json!(42)).unwrap(),
            Id::from_json(&json!("42")).unwrap()
        );
    }

    #[test]
    fn whole_floats_are_their_integer() {
        for (given, want) in [
            (json!(42.0), "42"),
            (json!(0.0), "0"),
            (json!(-0.0), "0"),
            (json!(1e19), "10000000000000000000"),
        ] {
            assert_eq!(OrgId::from_json(&given).unwrap().as_str(), want, "{given}");
        }
        for bad in [json!(42.5), json!(-1.0), json!(2e19), json!(1e300)] {
            assert!(OrgId::from_json(&bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn ids_refuse_other_types_and_sizes() {
        for bad in [
            json!(-1),
            json!(1.5),
            json!(null),
            json!(true),
            json!([]),
            json!(""),
            json!("x".repeat(257)),
        ] {
            assert!(OrgId::from_json(&bad).is_err(), "{bad} should be refused");
        }
        assert!(UnitId::from_json(&json!("x".repeat(256))).is_ok());
    }
}
