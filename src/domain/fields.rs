//! Reading the fields of a JSON document: one reader per kind of field, so
//! that every document (flags, experiments, cohorts, routing) says the same
//! thing about the same mistake, at the field's JSON Pointer.

use serde_json::{Map, Value};

use super::ids::Key;
use super::limits;
use super::problem::{pointer, Problem};

/// The longest free text accepted (descriptions, names).
pub(crate) const MAX_TEXT: usize = 10_000;

/// Fields the server adds to a served document (flag or experiment). A
/// client may send a GET answer back with PUT: they are ignored on write.
pub(crate) const SERVED: &[&str] = &["key", "version", "created_at", "updated_at"];

/// Adds a problem for every field of `map` not in `known`.
pub(crate) fn reject_unknown(
    map: &Map<String, Value>,
    known: &[&str],
    problems: &mut Vec<Problem>,
) {
    reject_unknown_at(map, known, "", problems);
}

pub(crate) fn reject_unknown_at(
    map: &Map<String, Value>,
    known: &[&str],
    at: &str,
    problems: &mut Vec<Problem>,
) {
    for field in map.keys() {
        if !known.contains(&field.as_str()) {
            problems.push(Problem::new(pointer(at, field), "unknown field"));
        }
    }
}

/// A free-text field that defaults to "".
pub(crate) fn optional_text(
    map: &Map<String, Value>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> String {
    match map.get(field) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => s.clone(),
        Some(_) => {
            problems.push(Problem::new(
                pointer("", field),
                format!("must be a string of at most {MAX_TEXT} bytes"),
            ));
            String::new()
        }
    }
}

/// A `true`/`false` field of the object at `at`; absent or null is `default`.
pub(crate) fn boolean(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    default: bool,
    problems: &mut Vec<Problem>,
) -> bool {
    match map.get(field) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(Problem::new(pointer(at, field), "must be true or false"));
            default
        }
    }
}

/// A string field; `required` ones must also be non-empty.
pub(crate) fn text(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    required: bool,
    problems: &mut Vec<Problem>,
) -> String {
    match map.get(field) {
        None | Some(Value::Null) if !required => String::new(),
        Some(Value::String(s)) if (!required || !s.is_empty()) && s.len() <= 10_000 => s.clone(),
        _ => {
            let want = if required {
                "a non-empty string"
            } else {
                "a string"
            };
            problems.push(Problem::new(pointer(at, field), format!("must be {want}")));
            String::new()
        }
    }
}

/// A required key field.
pub(crate) fn key_field(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Key> {
    match map.get(field).map(Key::from_json) {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            problems.push(Problem::new(pointer(at, field), e));
            None
        }
        None => {
            problems.push(Problem::new(pointer(at, field), "is required"));
            None
        }
    }
}

/// A key field that may be absent or null.
pub(crate) fn optional_key(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Key> {
    match map.get(field) {
        None | Some(Value::Null) => None,
        Some(_) => key_field(map, field, at, problems),
    }
}

/// A count (`capacity`, `min_count`, `max_count`): a whole number from 1 to
/// u32::MAX, which is what the store and the matcher hold.
pub(crate) fn count(
    map: &Map<String, Value>,
    field: &str,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<u32> {
    let parsed = map
        .get(field)
        .and_then(|v| limits::whole_number(v, 1, u64::from(u32::MAX)))
        .and_then(|n| u32::try_from(n).ok());
    if parsed.is_none() {
        problems.push(Problem::new(
            pointer(at, field),
            format!("must be a whole number from 1 to {}", u32::MAX),
        ));
    }
    parsed
}

/// An array of objects (`what` names one, for the message), each with its
/// JSON Pointer; absent or null is empty.
pub(crate) fn objects<'a>(
    value: Option<&'a Value>,
    at: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, &'a Map<String, Value>)> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let here = pointer(at, i);
                match item.as_object() {
                    Some(m) => Some((here, m)),
                    None => {
                        problems.push(Problem::new(here, format!("must be {what} object")));
                        None
                    }
                }
            })
            .collect(),
        Some(_) => {
            problems.push(Problem::new(at, "must be an array"));
            Vec::new()
        }
    }
}
