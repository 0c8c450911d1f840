//! Request bodies and URL parts into the engine's typed inputs: ids,
//! attributes within the §1 limits, and the bodies of the evaluate,
//! override, assign and participant endpoints. Each problem names the JSON
//! Pointer it is at; the engine takes only what parsed.

use serde_json::{Map, Value};

use crate::domain::ids::{Id, Key, OrgId, UnitId};
use crate::domain::limits;
use crate::domain::problem::{pointer, Problem};
use crate::engine::assign::{AssignRequest, BatchItem, MAX_BATCH};
use crate::engine::EngineError;

/// Parses an id (of an org, a participant…) taken from the URL.
pub(crate) fn path_id<K>(raw: &str, what: &str) -> Result<Id<K>, EngineError> {
    Id::parse(raw).map_err(|e| EngineError::validation("", format!("the {what} in the URL {e}")))
}

/// Parses a flag or experiment key taken from the URL.
pub(crate) fn path_key(raw: &str, what: &str) -> Result<Key, EngineError> {
    Key::parse(raw)
        .map_err(|e| EngineError::validation("", format!("the {what} key in the URL {e}")))
}

/// Takes the optional `attributes` object out of a request body at `at`,
/// within the size and depth limits of §1 (so that evaluating conditions
/// and matching against them is bounded work).
pub(crate) fn attributes(
    body: &mut Map<String, Value>,
    at: &str,
) -> Result<Map<String, Value>, EngineError> {
    match body.remove("attributes") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) if m.is_empty() => Ok(m),
        Some(value @ Value::Object(_)) => {
            limits::check_attributes(&value)
                .map_err(|e| EngineError::validation(format!("{at}/attributes"), e))?;
            match value {
                Value::Object(m) => Ok(m),
                _ => Ok(Map::new()),
            }
        }
        Some(_) => Err(EngineError::validation(
            format!("{at}/attributes"),
            "must be an object",
        )),
    }
}

/// Takes a required id field out of a request body at `at`.
pub(crate) fn body_id<K>(
    body: &mut Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<Id<K>, EngineError> {
    match body.remove(field) {
        None => Err(EngineError::validation(
            format!("{at}/{field}"),
            "is required",
        )),
        Some(v) => {
            Id::from_json_owned(v).map_err(|e| EngineError::validation(format!("{at}/{field}"), e))
        }
    }
}

/// A problem for each field left in a body once its known fields are taken
/// out: a misspelt field is refused, not silently ignored.
fn unknown_fields<'a>(
    rest: &'a Map<String, Value>,
    at: &'a str,
) -> impl Iterator<Item = Problem> + 'a {
    rest.keys()
        .map(move |field| Problem::new(pointer(at, field), "unknown field"))
}

/// The value, or `None` with its problems added to `problems`.
fn keep<T>(r: Result<T, EngineError>, problems: &mut Vec<Problem>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(EngineError::Validation(p)) => {
            problems.extend(p);
            None
        }
        Err(_) => None,
    }
}

/// Parses `{"org_id", "unit_id", "attributes"}` found at `at` in the body.
pub(crate) fn assign_request(body: Value, at: &str) -> Result<AssignRequest, EngineError> {
    let Value::Object(mut map) = body else {
        return Err(EngineError::validation(
            at,
            "must be an object with org_id, unit_id and attributes",
        ));
    };
    let mut problems = Vec::new();
    let org_id: Option<OrgId> = keep(body_id(&mut map, "org_id", at), &mut problems);
    let unit_id: Option<UnitId> = keep(body_id(&mut map, "unit_id", at), &mut problems);
    let attributes = match attributes(&mut map, at) {
        Ok(a) => a,
        Err(EngineError::Validation(p)) => {
            problems.extend(p);
            Map::new()
        }
        Err(e) => return Err(e),
    };
    problems.extend(unknown_fields(&map, at));
    match (org_id, unit_id) {
        (Some(org_id), Some(unit_id)) if problems.is_empty() => Ok(AssignRequest {
            org_id,
            unit_id,
            attributes,
        }),
        _ => Err(EngineError::Validation(problems)),
    }
}

/// Parses `{"items": [{"experiment", "org_id", "unit_id", "attributes"}]}`:
/// the body's own problems fail it; an item's problems are that item's
/// answer (at its pointer, added by the engine).
pub(crate) fn batch(body: Value) -> Result<Vec<BatchItem>, EngineError> {
    let not_items = || EngineError::validation("/items", "must be an array of assignment requests");
    let Value::Object(mut body) = body else {
        return Err(not_items());
    };
    let Some(Value::Array(items)) = body.remove("items") else {
        return Err(not_items());
    };
    let unknown: Vec<Problem> = unknown_fields(&body, "").collect();
    if !unknown.is_empty() {
        return Err(EngineError::Validation(unknown));
    }
    if items.len() > MAX_BATCH {
        return Err(EngineError::validation(
            "/items",
            format!("at most {MAX_BATCH} items per batch"),
        ));
    }
    Ok(items
        .into_iter()
        .map(|mut item| {
            let key = match item.as_object_mut().and_then(|m| m.remove("experiment")) {
                Some(Value::String(key)) if Key::parse(&key).is_ok() => key,
                _ => {
                    return Err(EngineError::validation(
                        "/experiment",
                        "must be an experiment key",
                    ))
                }
            };
            Ok((key, assign_request(item, "")?))
        })
        .collect())
}

/// Parses `{"org_id", "attributes"}` of a flag evaluation.
pub(crate) fn evaluation(body: Value) -> Result<(OrgId, Map<String, Value>), EngineError> {
    let Value::Object(mut body) = body else {
        return Err(EngineError::validation(
            "",
            "must be an object with org_id and attributes",
        ));
    };
    let mut problems = Vec::new();
    let org: Option<OrgId> = keep(body_id(&mut body, "org_id", ""), &mut problems);
    let attributes = keep(attributes(&mut body, ""), &mut problems);
    problems.extend(unknown_fields(&body, ""));
    match (org, attributes) {
        (Some(org), Some(attributes)) if problems.is_empty() => Ok((org, attributes)),
        _ => Err(EngineError::Validation(problems)),
    }
}

/// Parses `{"enabled": true|false}` of an override.
pub(crate) fn override_enabled(doc: &Value) -> Result<bool, EngineError> {
    let Some(map) = doc.as_object() else {
        return Err(EngineError::validation(
            "",
            "must be an object like {\"enabled\": true}",
        ));
    };
    if let Some(extra) = map.keys().find(|k| k.as_str() != "enabled") {
        return Err(EngineError::validation(
            format!("/{extra}"),
            "unknown field",
        ));
    }
    map.get("enabled")
        .and_then(Value::as_bool)
        .ok_or_else(|| EngineError::validation("/enabled", "must be true or false"))
}

/// Parses `{"attributes": {...}}` of a participant registration.
pub(crate) fn registration(body: Value) -> Result<Value, EngineError> {
    let Value::Object(mut body) = body else {
        return Err(EngineError::validation(
            "",
            "must be an object like {\"attributes\": {...}}",
        ));
    };
    if let Some(extra) = body.keys().find(|k| k.as_str() != "attributes") {
        return Err(EngineError::validation(pointer("", extra), "unknown field"));
    }
    Ok(Value::Object(attributes(&mut body, "")?))
}

/// Most characters of a drop's reason (§5).
pub(crate) const MAX_DROP_REASON: usize = 200;

/// Parses the optional `{"reason": "…"}` of a drop (no body, or `null`:
/// no reason).
pub(crate) fn drop_reason(body: Option<Value>) -> Result<Option<String>, EngineError> {
    let Some(body) = body.filter(|b| !b.is_null()) else {
        return Ok(None);
    };
    let Value::Object(mut body) = body else {
        return Err(EngineError::validation(
            "",
            "must be an object like {\"reason\": \"failed attention check\"}",
        ));
    };
    let mut problems: Vec<Problem> = Vec::new();
    let reason = match body.remove("reason") {
        None | Some(Value::Null) => None,
        // U+0000 never gets here: the body parser refuses it (§1).
        Some(Value::String(reason)) if reason.chars().count() <= MAX_DROP_REASON => Some(reason),
        Some(Value::String(_)) => {
            problems.push(Problem::new(
                "/reason",
                format!("must be at most {MAX_DROP_REASON} characters"),
            ));
            None
        }
        Some(_) => {
            problems.push(Problem::new("/reason", "must be a string or null"));
            None
        }
    };
    problems.extend(unknown_fields(&body, ""));
    if problems.is_empty() {
        Ok(reason)
    } else {
        Err(EngineError::Validation(problems))
    }
}

/// Parses `{"cohort_id": "…"}` of a move.
pub(crate) fn move_target(body: Value) -> Result<String, EngineError> {
    let Value::Object(mut body) = body else {
        return Err(EngineError::validation(
            "",
            "must be an object like {\"cohort_id\": \"…\"}",
        ));
    };
    let mut problems: Vec<Problem> = Vec::new();
    let cohort = match body.remove("cohort_id") {
        Some(Value::String(id)) if !id.is_empty() => Some(id),
        None => {
            problems.push(Problem::new("/cohort_id", "is required"));
            None
        }
        Some(_) => {
            problems.push(Problem::new(
                "/cohort_id",
                "must be a cohort id (a non-empty string)",
            ));
            None
        }
    };
    problems.extend(unknown_fields(&body, ""));
    match cohort {
        Some(cohort) if problems.is_empty() => Ok(cohort),
        _ => Err(EngineError::Validation(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(e: EngineError) -> Vec<String> {
        match e {
            EngineError::Validation(p) => p.into_iter().map(|p| p.path).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_drop_reason_is_optional_and_at_most_200_characters() {
        assert_eq!(drop_reason(None).unwrap(), None);
        assert_eq!(drop_reason(Some(json!({}))).unwrap(), None);
        assert_eq!(drop_reason(Some(Value::Null)).unwrap(), None);
        assert_eq!(drop_reason(Some(json!({"reason": null}))).unwrap(), None);
        let longest = "é".repeat(200);
        assert_eq!(
            drop_reason(Some(json!({ "reason": longest }))).unwrap(),
            Some(longest)
        );
        let over = "é".repeat(201);
        assert_eq!(
            paths(drop_reason(Some(json!({ "reason": over }))).unwrap_err()),
            ["/reason"]
        );
        assert_eq!(
            paths(drop_reason(Some(json!({"reason": 7}))).unwrap_err()),
            ["/reason"]
        );
        assert_eq!(
            paths(drop_reason(Some(json!({"why": "x"}))).unwrap_err()),
            ["/why"]
        );
        assert_eq!(paths(drop_reason(Some(json!("x"))).unwrap_err()), [""]);
    }

    #[test]
    fn a_move_names_one_cohort_id() {
        assert_eq!(move_target(json!({"cohort_id": "c-1"})).unwrap(), "c-1");
        assert_eq!(paths(move_target(json!({})).unwrap_err()), ["/cohort_id"]);
        assert_eq!(
            paths(move_target(json!({"cohort_id": ""})).unwrap_err()),
            ["/cohort_id"]
        );
        assert_eq!(
            paths(move_target(json!({"cohort_id": "c", "x": 1})).unwrap_err()),
            ["/x"]
        );
    }
}
