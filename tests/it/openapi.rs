//! The OpenAPI document is generated from the handlers; the committed copy
//! (`docs/openapi.json`) must match it, so the two cannot drift.

use crate::helpers::Backend;
use crate::{on_both_stores, start};

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = serde_json::to_string_pretty(&allot::http::openapi_document()).unwrap();
    let committed = include_str!("../../docs/openapi.json");
    assert!(
        generated.trim() == committed.trim(),
        "docs/openapi.json is out of date: run `cargo run -- openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every endpoint of docs/reference.md is documented.
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/flags", &["get"]),
        ("/v1/flags/{key}", &["get", "put", "delete"]),
        ("/v1/flags/{key}/orgs", &["get"]),
        ("/v1/flags/{key}/orgs/{org_id}", &["put", "delete"]),
        ("/v1/flags/{key}/evaluate", &["post"]),
        ("/v1/experiments", &["get"]),
        ("/v1/experiments/{key}", &["get", "put", "delete"]),
        ("/v1/experiments/{key}/versions", &["get"]),
        ("/v1/experiments/{key}/assign", &["post"]),
        ("/v1/assign", &["post"]),
        (
            "/v1/experiments/{key}/participants/{participant_id}",
            &["get", "put"],
        ),
        (
            "/v1/experiments/{key}/participants/{participant_id}/route",
            &["post"],
        ),
        (
            "/v1/experiments/{key}/participants/{participant_id}/accept",
            &["post"],
        ),
        (
            "/v1/experiments/{key}/participants/{participant_id}/decline",
            &["post"],
        ),
        ("/v1/experiments/{key}/cohorts", &["get"]),
        (
            "/v1/experiments/{key}/cohorts/{cohort_id}/participants",
            &["get"],
        ),
        ("/v1/experiments/{key}/routing/events", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
}

/// Client generators name a method after each operation: every operation
/// has an id, and no two share one.
#[test]
fn every_operation_has_its_own_id() {
    let doc: serde_json::Value = allot::http::openapi_document();
    let mut seen = std::collections::BTreeMap::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            if let Some(other) = seen.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id:?} is used by {other} and {method} {path}");
            }
        }
    }
    assert!(seen.len() >= 26, "{seen:?}");
}

/// Answers always carry every field (`null` where there is nothing), so a
/// strict client must not have to handle "missing": every property of an
/// answer's schema is required, and the ones that can be null say so.
#[test]
fn answers_require_every_field_they_always_send() {
    let doc: serde_json::Value = allot::http::openapi_document();
    let schemas = &doc["components"]["schemas"];
    // Every answer's schema (all but the inputs and the shared condition
    // language), the parts of an `allOf` included: each property it lists
    // is required. The only fields an answer leaves out are a rule's and a
    // composition entry's absent `condition`.
    const LEFT_OUT_WHEN_ABSENT: &[&str] = &["RuleConfig.condition", "EntryDef.condition"];
    let mut checked = 0;
    for (name, schema) in schemas.as_object().unwrap() {
        if name.ends_with("Input")
            || ["Condition", "FieldCondition", "OperatorCondition"].contains(&name.as_str())
        {
            continue;
        }
        let parts: Vec<&serde_json::Value> = match schema["allOf"].as_array() {
            Some(parts) => parts.iter().collect(),
            None => vec![schema],
        };
        for part in parts {
            let Some(properties) = part["properties"].as_object() else {
                continue;
            };
            let required: Vec<&str> = part["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            for p in properties.keys() {
                let field = format!("{name}.{p}");
                assert!(
                    required.contains(&p.as_str())
                        || LEFT_OUT_WHEN_ABSENT.contains(&field.as_str()),
                    "{field} is always sent but not required"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} answer fields found");
    // And every schema has an example (CI checks each against its schema).
    for (name, schema) in schemas.as_object().unwrap() {
        assert!(
            schema.get("example").is_some() || schema["examples"].get(0).is_some(),
            "{name} has no example"
        );
    }
    let mut codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [
            "bad_request",
            "conflict",
            "forbidden",
            "internal",
            "method_not_allowed",
            "not_found",
            "payload_too_large",
            "unauthorized",
            "unavailable",
            "validation_failed",
            "version_mismatch"
        ]
    );
    let treatment = &schemas["Assignment"]["properties"]["treatment"]["type"];
    assert_eq!(treatment, &serde_json::json!(["string", "null"]));
}

async fn the_server_serves_its_document(backend: Backend) {
    let (_store, app) = start!(backend);
    let served = app.get("/openapi.json").await.expect(200).body;
    let generated: serde_json::Value = allot::http::openapi_document();
    assert_eq!(served, generated);
}

fn component<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    schema
}

/// Request bodies have schemas of their own: unknown fields refused, the
/// defaulted fields optional, every bound of the contract stated.
#[test]
fn inputs_are_strict_and_optional_where_the_contract_has_a_default() {
    let doc = allot::http::openapi_document();
    let inputs = [
        "FlagInput",
        "RuleInput",
        "OverrideInput",
        "ExperimentInput",
        "TreatmentInput",
        "ForcedPinInput",
        "CohortInput",
        "VariableInput",
        "RoutingInput",
        "GroupInput",
        "EntryInput",
        "EvaluateInput",
        "AssignInput",
        "BatchItemInput",
        "BatchInput",
        "ParticipantInput",
    ];
    for name in inputs {
        let schema = component(&doc, name);
        assert_eq!(
            schema["additionalProperties"],
            serde_json::json!(false),
            "{name} accepts unknown fields"
        );
        assert!(schema.get("example").is_some(), "{name} has no example");
    }
    // Every field of a flag and an experiment has a default.
    for name in [
        "FlagInput",
        "ExperimentInput",
        "RoutingInput",
        "ParticipantInput",
    ] {
        assert!(
            component(&doc, name).get("required").is_none(),
            "{name} requires {}",
            component(&doc, name)["required"]
        );
    }
    let property = |schema: &str, field: &str, keyword: &str| {
        component(&doc, schema)["properties"][field][keyword].clone()
    };
    use serde_json::json;
    assert_eq!(property("RuleInput", "rollout", "maximum"), json!(100));
    assert_eq!(property("RuleInput", "rollout", "multipleOf"), json!(0.01));
    assert_eq!(property("TreatmentInput", "weight", "minimum"), json!(0));
    assert_eq!(property("ExperimentInput", "coverage", "maximum"), json!(1));
    assert_eq!(
        property("ExperimentInput", "treatments", "maxItems"),
        json!(100)
    );
    assert_eq!(
        property("ExperimentInput", "forced", "maxItems"),
        json!(1000)
    );
    assert_eq!(property("BatchInput", "items", "maxItems"), json!(1000));
    assert_eq!(property("CohortInput", "capacity", "minimum"), json!(1));
    assert_eq!(property("EntryInput", "min_count", "minimum"), json!(1));
    assert_eq!(property("GroupInput", "composition", "minItems"), json!(1));
    assert_eq!(
        property("RoutingInput", "wait_timeout_seconds", "maximum"),
        json!(31_536_000)
    );
    // A body read with GET goes back with PUT: the served fields are accepted.
    for field in ["key", "version", "created_at", "updated_at", "layout"] {
        assert_eq!(property("ExperimentInput", field, "readOnly"), json!(true));
    }
    for field in ["key", "version", "created_at", "updated_at"] {
        assert_eq!(property("FlagInput", field, "readOnly"), json!(true));
    }
    // Ids are a string of 1 to 256 bytes or a non-negative integer.
    let id = component(&doc, "Id");
    assert_eq!(id["oneOf"][0]["maxLength"], json!(256));
    assert_eq!(id["oneOf"][1]["minimum"], json!(0));
}

/// What every operation shares is in the document: a description, the
/// request id on every answer, the challenge on 401, the statuses a bad
/// URL, header or body meets, `servers`, no security on the probes, and
/// links from what creates a resource to what uses it.
#[test]
fn every_operation_documents_its_statuses_headers_and_links() {
    let doc = allot::http::openapi_document();
    assert!(doc["servers"][0]["url"].is_string());
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let at = format!("{method} {path}");
            for field in ["summary", "description", "operationId"] {
                assert!(
                    op[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{at} has no {field}"
                );
            }
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{at} {status} has no description"
                );
                assert!(
                    response["headers"]["x-request-id"].is_object(),
                    "{at} {status} does not declare x-request-id"
                );
                if status == "401" {
                    assert!(response["headers"]["WWW-Authenticate"].is_object());
                }
            }
            let probe = ["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str());
            if probe {
                assert_eq!(op["security"], serde_json::json!([]), "{at}");
            } else {
                assert!(responses.contains_key("401"), "{at} has no 401");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "422"] {
                    assert!(responses.contains_key(status), "{at} has no {status}");
                }
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for param in &params {
                assert!(
                    param["schema"].is_object() && param["description"].is_string(),
                    "{at} parameter {} is undocumented",
                    param["name"]
                );
                if param["name"] == "If-Match" {
                    assert!(responses.contains_key("412"), "{at} has no 412");
                }
            }
            if params.iter().any(|p| p["in"] == "path") {
                // (A PUT of a flag or experiment creates what is missing.)
                assert!(
                    responses.contains_key("404") || method == "put",
                    "{at} has no 404"
                );
                assert!(responses.contains_key("422"), "{at} has no 422");
            }
        }
    }
    let put_experiment = &doc["paths"]["/v1/experiments/{key}"]["put"];
    let links = put_experiment["responses"]["201"]["links"]
        .as_object()
        .unwrap();
    for link in ["Assign", "RegisterParticipant", "GetResults", "ListCohorts"] {
        assert_eq!(
            links[link]["parameters"]["key"], "$request.path.key",
            "{link}"
        );
    }
    let put_flag = &doc["paths"]["/v1/flags/{key}"]["put"];
    assert!(put_flag["responses"]["200"]["links"]["EvaluateFlag"].is_object());
    assert!(
        put_flag["responses"]["201"]["headers"]["ETag"].is_object(),
        "a written flag answers with its ETag"
    );
}

/// The examples the document gives are real: sent as they stand, in the
/// order a newcomer would, the server takes each of them.
async fn the_documented_examples_are_accepted(backend: Backend) {
    let (_store, app) = start!(backend);
    let doc = allot::http::openapi_document();
    let example = |name: &str| component(&doc, name)["example"].clone();
    app.put(
        "/v1/flags/organizations:code-review-experiments-enabled",
        example("FlagInput"),
    )
    .await
    .expect(201);
    app.put(
        "/v1/flags/organizations:code-review-experiments-enabled/orgs/42",
        example("OverrideInput"),
    )
    .await
    .expect(201);
    app.post(
        "/v1/flags/organizations:code-review-experiments-enabled/evaluate",
        example("EvaluateInput"),
    )
    .await
    .expect(200);
    app.put("/v1/experiments/code-review", example("ExperimentInput"))
        .await
        .expect(201);
    let assigned = app
        .post("/v1/experiments/code-review/assign", example("AssignInput"))
        .await
        .expect(200);
    // The example's org 42 is pinned by the example's `forced`.
    assert_eq!(assigned.body["reason"], "forced");
    let batch = app
        .post("/v1/assign", example("BatchInput"))
        .await
        .expect(200);
    assert!(
        batch.body["results"][1]["treatment"].is_string(),
        "{}",
        batch.body
    );
    let mut study = serde_json::json!({
        "cohorts": [example("CohortInput"), {"alias": "arm-skeptic"}],
        "variables": [example("VariableInput")],
        "routing": example("RoutingInput"),
    });
    study["routing"]["groups"]
        .as_array_mut()
        .unwrap()
        .push(example("GroupInput"));
    app.put("/v1/experiments/study", study).await.expect(201);
    app.put(
        "/v1/experiments/study/participants/p-1",
        example("ParticipantInput"),
    )
    .await
    .expect(201);
}

on_both_stores!(
    the_server_serves_its_document,
    the_documented_examples_are_accepted
);
