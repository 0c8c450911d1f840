//! What every operation has in common, added to the document the handlers'
//! annotations produce, so no handler can forget it:
//!
//! * the parameters' schemas, by name (`key`, `org_id`, `limit`, …), with
//!   the bounds the server checks;
//! * the error statuses a request can meet before its handler decides
//!   anything: 400 for a URL, header or body that cannot be read, 413 for a
//!   body over the limit, 422 for U+0000 in the URL or a body breaking a
//!   rule, 412 where `If-Match` is taken;
//! * the headers every answer carries (`x-request-id`, `WWW-Authenticate`
//!   on 401) and a description for each status;
//! * `servers`, links from the operations that create a resource to those
//!   that use it, and no security on the probes.

use serde_json::{json, Map, Value};

/// No U+0000 anywhere in a string (§1).
const NO_NUL: &str = "^[^\\u0000]*$";

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Adds what every operation has in common to `doc`.
pub fn complete(doc: &mut Value) {
    doc["servers"] = json!([{
        "url": "http://127.0.0.1:8080",
        "description": "A local allot on its default address"
    }]);
    let components = &mut doc["components"];
    for (name, value) in super::shared::schemas() {
        components["schemas"][name] = value;
    }
    components["headers"] = headers();
    // An enumeration's example is its first value.
    if let Some(schemas) = components["schemas"].as_object_mut() {
        for schema in schemas.values_mut() {
            let first = schema["enum"].get(0).cloned();
            if let (Some(first), None) = (first, schema.get("examples")) {
                schema["examples"] = json!([first]);
            }
        }
    }
    derive_examples(doc);
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    // The route that serves this document is added outside the handlers'
    // router (it serves what they generate), so it is described here.
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {
            "tags": ["operations"],
            "operationId": "get_openapi_document",
            "summary": "This document: the OpenAPI 3.1 description of every endpoint",
            "responses": {"200": {
                "description": "The document (the same as `allot openapi` prints).",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["openapi", "info", "paths"],
                    "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
                    "examples": [{"openapi": "3.1.0", "info": {"title": "allot", "version": "0.1.0"}, "paths": {}}]
                }}}
            }}
        }}),
    );
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            complete_operation(path, operation);
        }
    }
    let operations: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(method, op)| {
                    Some((
                        op["operationId"].as_str()?.to_owned(),
                        format!("{method} {path}"),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    add_links(paths, &operations);
}

/// Gives each schema without an example the part of an enclosing
/// schema's example it describes (a property's value, an array's first
/// item, the variant of a `oneOf` it fits, the fields of an `allOf` part),
/// until nothing changes: a nested schema is exemplified by the same data
/// as the answer that holds it, and cannot drift from it.
fn derive_examples(doc: &mut Value) {
    // The operations' answers with an example of their own.
    let answers: Vec<(Value, Value)> = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|operation| operation["responses"].as_object())
        .flat_map(|responses| responses.values())
        .filter_map(|response| response["content"]["application/json"].as_object())
        .filter_map(|content| {
            Some((
                content.get("schema")?.clone(),
                content.get("example")?.clone(),
            ))
        })
        .collect();
    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    loop {
        let mut found: Vec<(String, Value)> = Vec::new();
        for (schema, example) in &answers {
            parts_of(schema, example, schemas, &mut found);
        }
        for schema in schemas.values() {
            if let Some(example) = example_of(schema) {
                parts_of(schema, &example, schemas, &mut found);
            }
        }
        // A choice between schemas is exemplified by its first variant.
        for (name, schema) in schemas.iter() {
            let first = schema["oneOf"].get(0).or_else(|| schema["anyOf"].get(0));
            if let Some(example) = first
                .and_then(|v| v["$ref"].as_str())
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|variant| schemas.get(variant))
                .and_then(example_of)
            {
                found.push((name.clone(), example));
            }
        }
        let mut changed = false;
        for (name, example) in found {
            if let Some(target) = schemas.get_mut(&name) {
                if example_of(target).is_none() {
                    let example = only_own_fields(example, target);
                    target["examples"] = json!([example]);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}

fn example_of(schema: &Value) -> Option<Value> {
    schema
        .get("example")
        .or_else(|| schema["examples"].get(0))
        .cloned()
}

/// Each named schema `schema` refers to, with the part of `value` it
/// describes.
fn parts_of(
    schema: &Value,
    value: &Value,
    schemas: &Map<String, Value>,
    found: &mut Vec<(String, Value)>,
) {
    if value.is_null() {
        return;
    }
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        found.push((name.to_owned(), value.clone()));
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        parts_of(part, value, schemas, found);
    }
    for key in ["oneOf", "anyOf"] {
        for variant in schema[key].as_array().into_iter().flatten() {
            if fits(variant, value, schemas) {
                parts_of(variant, value, schemas, found);
            }
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for (name, sub) in properties {
            if let Some(v) = object.get(name) {
                parts_of(sub, v, schemas, found);
            }
        }
        if schema["additionalProperties"].is_object() {
            for (name, v) in object {
                if !properties.contains_key(name) {
                    parts_of(&schema["additionalProperties"], v, schemas, found);
                }
            }
        }
    } else if let (Some(extra), Some(object)) = (
        schema.get("additionalProperties").filter(|a| a.is_object()),
        value.as_object(),
    ) {
        for v in object.values() {
            parts_of(extra, v, schemas, found);
        }
    }
    if let (Some(items), Some(first)) = (
        schema.get("items").filter(|i| i.is_object()),
        value.as_array().and_then(|a| a.first()),
    ) {
        parts_of(items, first, schemas, found);
    }
}

/// Whether `value` can be an instance of the variant `schema`: its
/// required fields are there, and it is of the variant's type.
fn fits(schema: &Value, value: &Value, schemas: &Map<String, Value>) -> bool {
    let schema = match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => match schemas.get(name) {
            Some(s) => s,
            None => return false,
        },
        None => schema,
    };
    if schema["type"] == "null" {
        return value.is_null();
    }
    let mut required: Vec<&str> = Vec::new();
    let parts: Vec<&Value> = match schema["allOf"].as_array() {
        Some(parts) => parts
            .iter()
            .map(|p| {
                p["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .and_then(|name| schemas.get(name))
                    .unwrap_or(p)
            })
            .collect(),
        None => vec![schema],
    };
    for part in parts {
        required.extend(
            part["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str),
        );
    }
    if required.is_empty() {
        return !value.is_object() || schema["type"] == "object" || schema.get("type").is_none();
    }
    value
        .as_object()
        .is_some_and(|object| required.iter().all(|field| object.contains_key(*field)))
}

/// `example` without the fields `target` does not list (an `allOf` part
/// gets only its own).
fn only_own_fields(example: Value, target: &Value) -> Value {
    match (example, target["properties"].as_object()) {
        (Value::Object(object), Some(properties))
            if target.get("additionalProperties").is_none() =>
        {
            Value::Object(
                object
                    .into_iter()
                    .filter(|(k, _)| properties.contains_key(k))
                    .collect(),
            )
        }
        (example, _) => example,
    }
}

fn headers() -> Value {
    json!({
        "RequestId": {
            "description": "The request's id: the client's own `x-request-id`, if it sent one, else a generated UUID. Error bodies carry it too (`request_id`).",
            "required": true,
            "schema": {"type": "string"}
        },
        "WwwAuthenticate": {
            "description": "`Bearer`: the scheme the server expects.",
            "required": true,
            "schema": {"type": "string"}
        },
        "ETag": {
            "description": "The version as an entity tag, `\"<version>\"`; send it back in `If-Match` to change only this version.",
            "required": true,
            "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"}
        }
    })
}

/// The schema of a parameter, by its name: the same name means the same
/// thing on every path.
fn parameter_schema(name: &str) -> Option<(Value, &'static str)> {
    let string_id = json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": NO_NUL});
    Some(match name {
        "key" => (
            // (`Key` written out: its schema example would be tried on
            // every path, deletions included, besides the parameter's.)
            json!({"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,200}$"}),
            "The flag or experiment key: 1 to 200 of `A-Z a-z 0-9 . _ : -`.",
        ),
        "org_id" => (string_id, "The org id (1 to 256 bytes)."),
        "participant_id" => (
            string_id,
            "The participant's id, as the study knows it (1 to 256 bytes).",
        ),
        "cohort_id" => (
            json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": NO_NUL}),
            "A cohort's `id` (a UUID, from the cohort listing).",
        ),
        "limit" => (
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            "Page size, 1 to 1000.",
        ),
        "after" => (
            json!({"type": "string", "pattern": NO_NUL}),
            "The `next` of the previous page: only entries after it.",
        ),
        "before" => (
            json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
            "The `next_before` of the previous page: only older entries.",
        ),
        "phase" => (
            json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
            "The phase to export (phases count from 1; one that does not exist is 404); default: the current one.",
        ),
        "If-Match" => (
            json!({"type": "string", "pattern": "^ *(\\*|(W/)?\"[0-9]{1,18}\"|[0-9]{1,18}) *$"}),
            "Change only if this is the current version: `\"3\"` (the quotes are optional, so is `W/`), or `*` for any existing version. A stale version is 412.",
        ),
        "Accept" => (
            json!({"type": "string", "enum": ["text/csv", "application/x-ndjson"], "default": "text/csv"}),
            "The export's format.",
        ),
        _ => return None,
    })
}

/// The operations whose successful answers carry the version as `ETag`.
/// A path parameter's example, by name and path: the README's flag and
/// experiment, and the study of the routing examples; a deletion's is a
/// key of its own, so trying the examples does not delete what the others
/// name.
fn parameter_example(path: &str, operation_id: &str, name: &str) -> Option<&'static str> {
    Some(match name {
        "key" if operation_id == "delete_flag" => "organizations:retired-flag",
        "key" if operation_id == "delete_experiment" => "retired-experiment",
        "key" if path.starts_with("/v1/flags") => "organizations:code-review-experiments-enabled",
        "key"
            if ["/participants", "/cohorts", "/routing"]
                .iter()
                .any(|part| path.contains(part)) =>
        {
            "discussion-study"
        }
        "key" => "code-review",
        "org_id" => "42",
        "participant_id" => "p-17",
        _ => return None,
    })
}

const VERSIONED: &[&str] = &["get_flag", "put_flag", "get_experiment", "put_experiment"];

fn error_description(status: &str) -> &'static str {
    match status {
        "400" => "`bad_request`: the URL, a header or the body cannot be read (not JSON, wrong content type, bad query string).",
        "401" => "`unauthorized`: the bearer token is missing or unknown.",
        "403" => "`forbidden`: the token's role may not call this.",
        "404" => "`not_found`: no such flag, experiment, cohort or participant.",
        "405" => "`method_not_allowed`: the path does not answer this method.",
        "409" => "`conflict`: the change would break existing state.",
        "412" => "`version_mismatch`: `If-Match` names a version that is not the current one.",
        "413" => "`payload_too_large`: the body is over the configured limit (default 1 MiB).",
        "422" => "`validation_failed`: well-formed, but breaks a rule of the contract; `details` names each problem by JSON Pointer.",
        "503" => "`unavailable`: the store cannot be reached, or this experiment's stored configuration cannot be used.",
        _ => "An error.",
    }
}

fn success_description(status: &str) -> &'static str {
    match status {
        "200" => "OK.",
        "201" => "Created.",
        "204" => "Done; no body.",
        _ => "Success.",
    }
}

fn complete_operation(path: &str, operation: &mut Value) {
    // Open to everyone (§1): the probes and the document.
    let probe = matches!(path, "/healthz" | "/readyz" | "/openapi.json");
    if probe {
        operation["security"] = json!([]);
    }
    if operation.get("description").is_none() {
        if let Some(summary) = operation.get("summary").cloned() {
            operation["description"] = summary;
        }
    }
    let operation_id = operation["operationId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let operation_id = operation_id.as_str();
    let mut has_path = false;
    let mut has_query = false;
    let mut has_if_match = false;
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            match parameter["in"].as_str() {
                Some("path") => has_path = true,
                Some("query") => has_query = true,
                _ => {}
            }
            has_if_match |= name == "If-Match";
            if let Some((schema, description)) = parameter_schema(&name) {
                parameter["schema"] = schema;
                if parameter.get("description").is_none_or(|d| d == "") {
                    parameter["description"] = json!(description);
                }
            }
            if let Some(example) = parameter_example(path, operation_id, &name) {
                parameter["example"] = json!(example);
            }
        }
    }
    let has_body = operation.get("requestBody").is_some();
    let mut errors: Vec<&str> = Vec::new();
    if has_path || has_query || has_body || has_if_match {
        errors.push("400");
    }
    if !probe {
        errors.push("401");
    }
    if has_body {
        errors.push("413");
    }
    if has_path || has_query || has_body {
        errors.push("422");
    }
    if has_if_match {
        errors.push("412");
    }
    let responses = &mut operation["responses"];
    for status in errors {
        if responses.get(status).is_none() {
            responses[status] = json!({
                "content": {"application/json": {"schema": schema("ErrorBody")}}
            });
        }
    }
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        if response.get("description").is_none_or(|d| d == "") {
            response["description"] = json!(if status.starts_with('2') {
                success_description(status)
            } else {
                error_description(status)
            });
        }
        let headers = response["headers"].as_object_mut().map(std::mem::take);
        let mut headers = headers.unwrap_or_default();
        headers.insert(
            "x-request-id".into(),
            json!({"$ref": "#/components/headers/RequestId"}),
        );
        if status.starts_with('2') && VERSIONED.contains(&operation_id) {
            headers.insert("ETag".into(), json!({"$ref": "#/components/headers/ETag"}));
        }
        if status == "401" {
            headers.insert(
                "WWW-Authenticate".into(),
                json!({"$ref": "#/components/headers/WwwAuthenticate"}),
            );
        }
        response["headers"] = Value::Object(sorted(headers));
    }
}

fn sorted(map: Map<String, Value>) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

/// The parameters of a link, each taken from the request that made the
/// resource (or its answer).
type Parameters = &'static [(&'static str, &'static str)];

const KEY: Parameters = &[("key", "$request.path.key")];
const PARTICIPANT: Parameters = &[
    ("key", "$request.path.key"),
    ("participant_id", "$request.path.participant_id"),
];

/// Operations linked to, each with its parameters.
type Targets = &'static [(&'static str, Parameters)];

/// From an operation's successful answers, the operations it links to.
const LINKS: &[(&str, &[&str], Targets)] = &[
    (
        "put_flag",
        &["200", "201"],
        &[
            ("get_flag", KEY),
            ("delete_flag", KEY),
            ("evaluate_flag", KEY),
            ("list_overrides", KEY),
            ("put_override", KEY),
            ("flag_history", KEY),
        ],
    ),
    (
        "put_experiment",
        &["200", "201"],
        &[
            ("get_experiment", KEY),
            ("delete_experiment", KEY),
            ("list_versions", KEY),
            ("get_results", KEY),
            ("export_exposures", KEY),
            ("assign", KEY),
            ("list_cohorts", KEY),
            ("list_routing_events", KEY),
            ("register_participant", KEY),
            ("list_participants", KEY),
        ],
    ),
    (
        "register_participant",
        &["200", "201"],
        &[
            ("get_participant", PARTICIPANT),
            ("route_participant", PARTICIPANT),
            ("accept_participant", PARTICIPANT),
            ("decline_participant", PARTICIPANT),
            ("heartbeat_participant", PARTICIPANT),
            ("complete_participant", PARTICIPANT),
            ("drop_participant", PARTICIPANT),
            ("move_participant", PARTICIPANT),
        ],
    ),
    (
        "put_override",
        &["200", "201"],
        &[(
            "delete_override",
            &[
                ("key", "$request.path.key"),
                ("org_id", "$request.path.org_id"),
            ],
        )],
    ),
    (
        "list_cohorts",
        &["200"],
        &[(
            "list_cohort_participants",
            &[
                ("key", "$request.path.key"),
                ("cohort_id", "$response.body#/0/id"),
            ],
        )],
    ),
];

/// Links from the operations that create a resource to those that use it,
/// so a client (and a stateful fuzzer) can follow the API from one answer
/// to the next request.
fn add_links(paths: &mut Map<String, Value>, operations: &[(String, String)]) {
    for (from, statuses, links) in LINKS {
        let Some(at) = locate(operations, from) else {
            continue;
        };
        let Some(operation) = operation_mut(paths, &at) else {
            continue;
        };
        let mut out = Map::new();
        for (to, parameters) in *links {
            if locate(operations, to).is_some() {
                let parameters: Map<String, Value> = parameters
                    .iter()
                    .map(|(name, from)| ((*name).to_owned(), json!(from)))
                    .collect();
                out.insert(
                    link_name(to),
                    json!({"operationId": to, "parameters": parameters}),
                );
            }
        }
        for status in *statuses {
            if let Some(response) = operation["responses"].get_mut(*status) {
                response["links"] = Value::Object(out.clone());
            }
        }
    }
}

fn locate(operations: &[(String, String)], id: &str) -> Option<String> {
    operations
        .iter()
        .find(|(op, _)| op == id)
        .map(|(_, at)| at.clone())
}

fn operation_mut<'a>(paths: &'a mut Map<String, Value>, at: &str) -> Option<&'a mut Value> {
    let (method, path) = at.split_once(' ')?;
    paths.get_mut(path)?.get_mut(method)
}

/// `get_flag` → `GetFlag`: link names in the form generators expect.
fn link_name(operation_id: &str) -> String {
    operation_id
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect()
}
