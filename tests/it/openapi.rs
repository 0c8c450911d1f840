//! The OpenAPI document is generated from the handlers; the committed copy
//! (`docs/openapi.json`) must match it, so the two cannot drift.

use crate::helpers::Backend;
use crate::{on_both_stores, start};

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = allot::http::openapi_document().to_pretty_json().unwrap();
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
    let doc: serde_json::Value =
        serde_json::from_str(&allot::http::openapi_document().to_json().unwrap()).unwrap();
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
    let doc: serde_json::Value =
        serde_json::from_str(&allot::http::openapi_document().to_json().unwrap()).unwrap();
    let schemas = &doc["components"]["schemas"];
    for name in [
        // (FlagView, ExperimentView and EventView flatten a document of the
        // domain: their schemas are `allOf`, left for the input/output split.)
        "Assignment",
        "OverrideView",
        "OverridePage",
        "FlagEvaluation",
        "VersionView",
        "MovedView",
        "MovedRangeView",
        "ParticipantView",
        "CohortRef",
        "CohortView",
        "EventPage",
        "UnusableView",
    ] {
        let schema = &schemas[name];
        let properties: Vec<&String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .collect();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for p in properties {
            assert!(required.contains(&p.as_str()), "{name}.{p} is not required");
        }
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
    let generated: serde_json::Value =
        serde_json::from_str(&allot::http::openapi_document().to_json().unwrap()).unwrap();
    assert_eq!(served, generated);
}

on_both_stores!(the_server_serves_its_document);
