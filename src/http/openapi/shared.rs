//! Schemas that JSON Schema states better than a Rust type can: ids (a
//! string or an integer), any JSON without U+0000 (payloads, attributes,
//! variable values) and the condition language of §6, which is recursive.
//! The input types of [`super::inputs`] refer to them by name.

use serde_json::{json, Map, Value};

/// No U+0000 anywhere in a string (§1: every store refuses it alike).
const NO_NUL: &str = "^[^\\u0000]*$";

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The operators of §6 and what each takes.
fn operators() -> Map<String, Value> {
    let mut ops = Map::new();
    for op in ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$exists"] {
        ops.insert(op.into(), schema("Json"));
    }
    for op in ["$in", "$nin", "$ini", "$nini"] {
        ops.insert(
            op.into(),
            json!({"type": "array", "maxItems": 10000, "items": schema("Json")}),
        );
    }
    for op in ["$all", "$alli"] {
        ops.insert(
            op.into(),
            json!({"type": "array", "maxItems": 10000, "items": schema("FieldCondition")}),
        );
    }
    for op in ["$regex", "$regexi"] {
        ops.insert(
            op.into(),
            json!({"type": "string", "pattern": NO_NUL,
                   "description": "A pattern of the Rust `regex` crate's syntax (no look-around, no backreferences); one that does not compile is 422."}),
        );
    }
    ops.insert(
        "$type".into(),
        json!({"enum": ["string", "number", "boolean", "object", "array", "null"]}),
    );
    ops.insert(
        "$elemMatch".into(),
        // Like GrowthBook: an object whose keys all start with `$` is
        // operators on each element, anything else a condition on it.
        json!({"anyOf": [
            schema("OperatorCondition"),
            {"allOf": [schema("Condition"), {"not": {"minProperties": 1, "propertyNames": {"pattern": "^\\$"}}}]}
        ]}),
    );
    for op in ["$not", "$size"] {
        ops.insert(op.into(), schema("FieldCondition"));
    }
    for op in ["$veq", "$vne", "$vgt", "$vgte", "$vlt", "$vlte"] {
        ops.insert(
            op.into(),
            json!({"type": ["string", "number"], "pattern": NO_NUL}),
        );
    }
    ops
}

/// `(name, schema)` of each shared schema.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let nested = json!({"type": "array", "items": schema("Condition")});
    vec![
        (
            "Id",
            json!({
                "description": "An org, unit or participant id: a string of 1 to 256 bytes (UTF-8), or a non-negative integer, which stands for its decimal string (`42` ≡ `\"42\"`).",
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": 256, "pattern": NO_NUL},
                    {"type": "integer", "minimum": 0, "maximum": 18_446_744_073_709_551_615_u64}
                ],
                "examples": [42, "pr-1234"]
            }),
        ),
        (
            "Json",
            json!({
                "description": "Any JSON value. Strings and object keys hold no U+0000; numbers are finite.",
                // No `type`: each keyword applies to the values it can
                // (strings, arrays, objects). Object members are checked
                // with `unevaluatedProperties`, not `additionalProperties`,
                // and arrays are not given a type: generators that write
                // types (openapi-typescript) then read this as "any value"
                // instead of a self-referencing array type TypeScript
                // refuses.
                "pattern": NO_NUL,
                "items": schema("Json"),
                "propertyNames": {"pattern": NO_NUL},
                "unevaluatedProperties": schema("Json"),
                "examples": [{"model": "a"}]
            }),
        ),
        (
            "Attributes",
            json!({
                "description": "What conditions are evaluated against: a JSON object of at most 16 KiB and 32 levels (422 over either).",
                "type": "object",
                "propertyNames": {"pattern": NO_NUL},
                "additionalProperties": schema("Json"),
                "examples": [{"plan": "business", "score": 8, "survey": {"q1": "yes"}}]
            }),
        ),
        (
            "Condition",
            json!({
                "description": "A condition of §6 (GrowthBook's `evalCondition` language): `{\"field\": value}` is equality, `{\"field\": {\"$op\": arg}}` applies operators, `$and`/`$or`/`$nor` take lists of conditions and `$not` one; several entries are ANDed and `{}` matches everything. A field may be a dotted path (`survey.q1`). At most 64 KiB of JSON.",
                "type": "object",
                "properties": {"$and": nested, "$or": nested, "$nor": nested, "$not": schema("Condition")},
                "propertyNames": {"pattern": NO_NUL},
                "additionalProperties": schema("FieldCondition"),
                "examples": [{"plan": {"$in": ["business", "enterprise"]}, "score": {"$gte": 7}}]
            }),
        ),
        (
            "FieldCondition",
            json!({
                "description": "What a field must hold: an object whose keys all start with `$` applies those operators; any other value (objects included) must equal the field.",
                // (Spelt out rather than `allOf` with `Json`: some
                // validators follow `allOf` into `Json`'s `items` forever.)
                "anyOf": [
                    {"type": ["null", "boolean", "number", "string", "array"], "pattern": NO_NUL, "items": schema("Json")},
                    {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": schema("Json"),
                     "not": {"minProperties": 1, "propertyNames": {"pattern": "^\\$"}}},
                    schema("OperatorCondition")
                ]
            }),
        ),
        (
            "OperatorCondition",
            json!({
                "description": "Operators applied to one field, all of which must hold.",
                "type": "object",
                "minProperties": 1,
                "properties": operators(),
                "additionalProperties": false,
                "examples": [{"$gte": 7, "$lt": 10}]
            }),
        ),
    ]
}
