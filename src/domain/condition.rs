//! The condition language (contract §6): GrowthBook's `evalCondition`.
//!
//! A condition is compiled once, when the config that holds it is stored, into
//! a [`Condition`] tree with its regular expressions built; evaluation then
//! walks the tree and never fails. Two entry points:
//!
//! * [`validate`] is the strict write-time check: a condition that is not an
//!   object, an unknown operator, an invalid `$regex` or an argument of the
//!   wrong shape is a [`Problem`] (422).
//! * [`Condition::compile`] is total: whatever it is given, it builds a tree
//!   that evaluates exactly as GrowthBook's SDK does (an unknown operator or an
//!   invalid pattern evaluates to false). The conformance suite runs through it.
//!
//! The comparisons reproduce JavaScript's coercions (`value + ""`,
//! `value * 1`, `<` between mixed types, strict `===`) because GrowthBook's
//! reference implementation is JavaScript and its cross-SDK cases encode them.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::problem::{pointer, Problem};

/// A compiled condition: every clause must hold.
#[derive(Debug, Clone)]
pub struct Condition {
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone)]
enum Clause {
    Or(Vec<Condition>),
    Nor(Vec<Condition>),
    And(Vec<Condition>),
    Not(Box<Condition>),
    /// A malformed logical operator argument: never holds.
    Never,
    Field {
        path: Vec<String>,
        test: Test,
    },
}

/// A test applied to one attribute value (`evalConditionValue`).
#[derive(Debug, Clone)]
enum Test {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// Structural equality, as `JSON.stringify(a) === JSON.stringify(b)`.
    Literal(Value),
    Ops(Vec<Op>),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone)]
enum Op {
    Version(VersionOp, String),
    Eq(Value),
    Ne(Value),
    Compare(Cmp, Value),
    Exists(bool),
    In {
        list: Vec<Value>,
        insensitive: bool,
        negate: bool,
    },
    Not(Box<Test>),
    Size(Box<Test>),
    ElemMatch(ElemMatch),
    All {
        tests: Vec<Test>,
        insensitive: bool,
    },
    Regex(Regex),
    Type(String),
    /// Unknown operator, invalid pattern or wrong argument type: false.
    Never,
}

#[derive(Debug, Clone, Copy)]
enum VersionOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
enum ElemMatch {
    Value(Box<Test>),
    Object(Box<Condition>),
}

/// Operators allowed inside an operator object.
const OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$ini",
    "$nini",
    "$all",
    "$alli",
    "$exists",
    "$type",
    "$regex",
    "$regexi",
    "$elemMatch",
    "$size",
    "$not",
    "$veq",
    "$vne",
    "$vgt",
    "$vgte",
    "$vlt",
    "$vlte",
];
const TYPES: &[&str] = &[
    "string",
    "number",
    "boolean",
    "object",
    "array",
    "null",
    "undefined",
];

fn is_operator_object(map: &Map<String, Value>) -> bool {
    !map.is_empty() && map.keys().all(|k| k.starts_with('$'))
}

// ---------------------------------------------------------------- validation

/// Strict write-time check of a condition held at `path` in a document.
pub fn validate(value: &Value, path: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    match value {
        Value::Object(map) => validate_condition(map, path, &mut problems),
        _ => problems.push(Problem::new(path, "a condition must be a JSON object")),
    }
    problems
}

fn validate_condition(map: &Map<String, Value>, path: &str, out: &mut Vec<Problem>) {
    for (key, value) in map {
        let here = pointer(path, key);
        match key.as_str() {
            "$or" | "$nor" | "$and" => match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = pointer(&here, i);
                        match item {
                            Value::Object(m) => validate_condition(m, &at, out),
                            _ => out.push(Problem::new(at, "must be a condition object")),
                        }
                    }
                }
                _ => out.push(Problem::new(
                    here,
                    format!("{key} takes an array of conditions"),
                )),
            },
            "$not" => match value {
                Value::Object(m) => validate_condition(m, &here, out),
                _ => out.push(Problem::new(here, "$not takes a condition object")),
            },
            _ => validate_value(value, &here, out),
        }
    }
}

fn validate_value(value: &Value, path: &str, out: &mut Vec<Problem>) {
    let Value::Object(map) = value else { return };
    if !is_operator_object(map) {
        return;
    }
    for (op, arg) in map {
        let here = pointer(path, op);
        match op.as_str() {
            "$in" | "$nin" | "$ini" | "$nini" => {
                if !arg.is_array() {
                    out.push(Problem::new(here, format!("{op} takes an array")));
                }
            }
            "$all" | "$alli" => match arg {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        validate_value(item, &pointer(&here, i), out);
                    }
                }
                _ => out.push(Problem::new(here, format!("{op} takes an array"))),
            },
            "$regex" | "$regexi" => match arg {
                Value::String(pattern) => {
                    if let Err(e) = build_regex(pattern, op == "$regexi") {
                        out.push(Problem::new(
                            here,
                            format!("invalid regular expression: {e}"),
                        ));
                    }
                }
                _ => out.push(Problem::new(here, format!("{op} takes a pattern string"))),
            },
            "$type" => {
                if !arg.as_str().is_some_and(|t| TYPES.contains(&t)) {
                    out.push(Problem::new(
                        here,
                        format!("$type takes one of {}", TYPES.join(", ")),
                    ));
                }
            }
            "$elemMatch" => match arg {
                Value::Object(m) if is_operator_object(m) => validate_value(arg, &here, out),
                Value::Object(m) => validate_condition(m, &here, out),
                _ => out.push(Problem::new(here, "$elemMatch takes an object")),
            },
            "$not" | "$size" => validate_value(arg, &here, out),
            "$veq" | "$vne" | "$vgt" | "$vgte" | "$vlt" | "$vlte" => {
                if !(arg.is_string() || arg.is_number()) {
                    out.push(Problem::new(here, format!("{op} takes a version string")));
                }
            }
            known if OPERATORS.contains(&known) => {}
            _ => out.push(Problem::new(here, format!("unknown operator {op}"))),
        }
    }
}

fn build_regex(pattern: &str, insensitive: bool) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(insensitive)
        .size_limit(1 << 20)
        .build()
}

// ---------------------------------------------------------------- compilation

impl Condition {
    /// A condition that matches everything (`{}`).
    pub fn always() -> Self {
        Self {
            clauses: Vec::new(),
        }
    }

    /// Compiles any JSON value; never fails (see the module docs).
    pub fn compile(value: &Value) -> Self {
        match value {
            Value::Object(map) => compile_condition(map),
            // GrowthBook iterates the entries of whatever it is given; a
            // non-object has none that can hold, so treat it as never.
            _ => Self {
                clauses: vec![Clause::Never],
            },
        }
    }

    /// Does the condition hold for these attributes?
    pub fn matches(&self, attributes: &Value) -> bool {
        self.clauses.iter().all(|c| c.holds(attributes))
    }
}

fn compile_condition(map: &Map<String, Value>) -> Condition {
    let list = |v: &Value| -> Option<Vec<Condition>> {
        v.as_array()
            .map(|items| items.iter().map(Condition::compile).collect())
    };
    let clauses = map
        .iter()
        .map(|(key, value)| match key.as_str() {
            "$or" => list(value).map_or(Clause::Never, Clause::Or),
            "$nor" => list(value).map_or(Clause::Never, Clause::Nor),
            "$and" => list(value).map_or(Clause::Never, Clause::And),
            "$not" => Clause::Not(Box::new(Condition::compile(value))),
            _ => Clause::Field {
                path: key.split('.').map(str::to_owned).collect(),
                test: compile_test(value),
            },
        })
        .collect();
    Condition { clauses }
}

fn compile_test(value: &Value) -> Test {
    match value {
        Value::String(s) => Test::Str(s.clone()),
        Value::Number(n) => Test::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => Test::Bool(*b),
        Value::Null => Test::Null,
        Value::Object(map) if is_operator_object(map) => {
            Test::Ops(map.iter().map(|(op, arg)| compile_op(op, arg)).collect())
        }
        other => Test::Literal(other.clone()),
    }
}

fn compile_op(op: &str, arg: &Value) -> Op {
    let version = |kind| Op::Version(kind, padded_version(arg));
    match op {
        "$veq" => version(VersionOp::Eq),
        "$vne" => version(VersionOp::Ne),
        "$vgt" => version(VersionOp::Gt),
        "$vgte" => version(VersionOp::Gte),
        "$vlt" => version(VersionOp::Lt),
        "$vlte" => version(VersionOp::Lte),
        "$eq" => Op::Eq(arg.clone()),
        "$ne" => Op::Ne(arg.clone()),
        "$lt" => Op::Compare(Cmp::Lt, arg.clone()),
        "$lte" => Op::Compare(Cmp::Lte, arg.clone()),
        "$gt" => Op::Compare(Cmp::Gt, arg.clone()),
        "$gte" => Op::Compare(Cmp::Gte, arg.clone()),
        "$exists" => Op::Exists(truthy(arg)),
        "$in" | "$nin" | "$ini" | "$nini" => match arg {
            Value::Array(list) => Op::In {
                list: list.clone(),
                insensitive: op.ends_with('i'),
                negate: op.starts_with("$n"),
            },
            _ => Op::Never,
        },
        "$all" | "$alli" => match arg {
            Value::Array(items) => Op::All {
                tests: items.iter().map(compile_test).collect(),
                insensitive: op == "$alli",
            },
            _ => Op::Never,
        },
        "$not" => Op::Not(Box::new(compile_test(arg))),
        "$size" => Op::Size(Box::new(compile_test(arg))),
        "$elemMatch" => match arg {
            Value::Object(map) if is_operator_object(map) => {
                Op::ElemMatch(ElemMatch::Value(Box::new(compile_test(arg))))
            }
            _ => Op::ElemMatch(ElemMatch::Object(Box::new(Condition::compile(arg)))),
        },
        "$regex" | "$regexi" => match arg.as_str().map(|p| build_regex(p, op == "$regexi")) {
            Some(Ok(re)) => Op::Regex(re),
            _ => Op::Never,
        },
        "$type" => match arg {
            Value::String(t) => Op::Type(t.clone()),
            _ => Op::Never,
        },
        _ => Op::Never,
    }
}

// ---------------------------------------------------------------- evaluation

impl Clause {
    fn holds(&self, obj: &Value) -> bool {
        match self {
            Clause::Or(list) => list.is_empty() || list.iter().any(|c| c.matches(obj)),
            Clause::Nor(list) => !(list.is_empty() || list.iter().any(|c| c.matches(obj))),
            Clause::And(list) => list.iter().all(|c| c.matches(obj)),
            Clause::Not(c) => !c.matches(obj),
            Clause::Never => false,
            Clause::Field { path, test } => test.holds(get_path(obj, path), false),
        }
    }
}

const NULL: Value = Value::Null;

/// GrowthBook's `getPath`: a missing step yields null. Arrays are indexable by
/// a numeric step, as JavaScript's `in` allows.
fn get_path<'a>(obj: &'a Value, path: &[String]) -> &'a Value {
    let mut current = obj;
    for step in path {
        current = match current {
            Value::Object(map) => match map.get(step) {
                Some(v) => v,
                None => return &NULL,
            },
            Value::Array(items) => match step.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(v)
                    if step
                        == &step
                            .parse::<usize>()
                            .map(|i| i.to_string())
                            .unwrap_or_default() =>
                {
                    v
                }
                _ => return &NULL,
            },
            _ => return &NULL,
        };
    }
    current
}

impl Test {
    fn holds(&self, value: &Value, insensitive: bool) -> bool {
        match self {
            Test::Str(s) => {
                if insensitive {
                    js::to_string(value).to_lowercase() == s.to_lowercase()
                } else {
                    js::to_string(value) == *s
                }
            }
            Test::Num(n) => js::to_number(value) == *n,
            Test::Bool(b) => !value.is_null() && truthy(value) == *b,
            Test::Null => value.is_null(),
            Test::Literal(expected) => js::stringify_eq(value, expected),
            Test::Ops(ops) => ops.iter().all(|op| op.holds(value)),
        }
    }
}

impl Op {
    fn holds(&self, actual: &Value) -> bool {
        match self {
            Op::Version(kind, expected) => {
                let actual = padded_version(actual);
                let ord = js::cmp_utf16(&actual, expected);
                match kind {
                    VersionOp::Eq => ord == Ordering::Equal,
                    VersionOp::Ne => ord != Ordering::Equal,
                    VersionOp::Gt => ord == Ordering::Greater,
                    VersionOp::Gte => ord != Ordering::Less,
                    VersionOp::Lt => ord == Ordering::Less,
                    VersionOp::Lte => ord != Ordering::Greater,
                }
            }
            Op::Eq(expected) => js::strict_eq(actual, expected),
            Op::Ne(expected) => !js::strict_eq(actual, expected),
            Op::Compare(cmp, expected) => match cmp {
                Cmp::Lt => js::less_than(actual, expected) == Some(true),
                Cmp::Gt => js::less_than(expected, actual) == Some(true),
                Cmp::Lte => js::less_than(expected, actual) == Some(false),
                Cmp::Gte => js::less_than(actual, expected) == Some(false),
            },
            Op::Exists(expected) => *expected != actual.is_null(),
            Op::In {
                list,
                insensitive,
                negate,
            } => is_in(actual, list, *insensitive) != *negate,
            Op::Not(test) => !test.holds(actual, false),
            Op::Size(test) => match actual {
                Value::Array(items) => test.holds(&Value::from(items.len()), false),
                _ => false,
            },
            Op::ElemMatch(check) => match actual {
                Value::Array(items) => items.iter().any(|item| {
                    truthy(item)
                        && match check {
                            ElemMatch::Value(test) => test.holds(item, false),
                            ElemMatch::Object(cond) => cond.matches(item),
                        }
                }),
                _ => false,
            },
            Op::All { tests, insensitive } => match actual {
                Value::Array(items) => tests
                    .iter()
                    .all(|test| items.iter().any(|item| test.holds(item, *insensitive))),
                _ => false,
            },
            Op::Regex(re) => re.is_match(&js::to_string(actual)),
            Op::Type(expected) => js::type_of(actual) == expected,
            Op::Never => false,
        }
    }
}

fn is_in(actual: &Value, list: &[Value], insensitive: bool) -> bool {
    let same = |a: &Value, b: &Value| {
        if insensitive {
            match (a, b) {
                (Value::String(x), Value::String(y)) => x.to_lowercase() == y.to_lowercase(),
                _ => js::strict_eq(a, b),
            }
        } else {
            js::strict_eq(a, b)
        }
    };
    match actual {
        Value::Array(items) => items.iter().any(|el| list.iter().any(|exp| same(el, exp))),
        _ => list.iter().any(|exp| same(actual, exp)),
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// GrowthBook's `paddedVersionString`: strip a leading `v` and build info,
/// split on `.` and `-`, mark a release (3 parts) with `~` so it sorts after
/// its pre-releases, and left-pad numeric parts so strings compare as numbers.
fn padded_version(input: &Value) -> String {
    let raw = match input {
        Value::Number(_) => js::to_string(input),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => "0".to_owned(),
    };
    let trimmed = raw.strip_prefix('v').unwrap_or(&raw);
    let trimmed = trimmed.split('+').next().unwrap_or_default();
    let mut parts: Vec<String> = trimmed.split(['-', '.']).map(str::to_owned).collect();
    if parts.len() == 3 {
        parts.push("~".to_owned());
    }
    parts
        .iter()
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                format!("{p:>5}")
            } else {
                p.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The JavaScript value semantics GrowthBook's reference implementation relies on.
mod js {
    use std::cmp::Ordering;

    use serde_json::Value;

    /// `typeof`, with arrays and null told apart as GrowthBook's `getType` does.
    pub fn type_of(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Object(_) => "object",
        }
    }

    /// `String(v)` (equivalently `v + ""`).
    pub fn to_string(v: &Value) -> String {
        match v {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => number_to_string(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    if i.is_null() {
                        String::new()
                    } else {
                        to_string(i)
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            Value::Object(_) => "[object Object]".to_owned(),
        }
    }

    /// `Number::toString` for the values JSON can hold.
    pub fn number_to_string(f: f64) -> String {
        if f.is_nan() {
            return "NaN".to_owned();
        }
        if f == 0.0 {
            return "0".to_owned();
        }
        let abs = f.abs();
        if (1e-6..1e21).contains(&abs) {
            // Rust's shortest round-trip digits are JavaScript's too.
            format!("{f}")
        } else {
            let s = format!("{f:e}");
            match s.split_once('e') {
                Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
                _ => s,
            }
        }
    }

    /// `Number(v)` (equivalently `v * 1`).
    pub fn to_number(v: &Value) -> f64 {
        match v {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            Value::String(s) => string_to_number(s),
            Value::Array(_) | Value::Object(_) => string_to_number(&to_string(v)),
        }
    }

    fn string_to_number(s: &str) -> f64 {
        let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if t.is_empty() {
            return 0.0;
        }
        for (prefix, radix) in [
            ("0x", 16),
            ("0X", 16),
            ("0o", 8),
            ("0O", 8),
            ("0b", 2),
            ("0B", 2),
        ] {
            if let Some(digits) = t.strip_prefix(prefix) {
                return u64::from_str_radix(digits, radix).map_or(f64::NAN, |n| n as f64);
            }
        }
        match t {
            "Infinity" | "+Infinity" => return f64::INFINITY,
            "-Infinity" => return f64::NEG_INFINITY,
            _ => {}
        }
        // Rust also accepts "inf", "nan" and friends, which JavaScript does not.
        let body = t.trim_start_matches(['+', '-']);
        if body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            t.parse().unwrap_or(f64::NAN)
        } else {
            f64::NAN
        }
    }

    /// `ToPrimitive`: arrays and objects become strings, the rest stay.
    fn to_primitive(v: &Value) -> Value {
        match v {
            Value::Array(_) | Value::Object(_) => Value::String(to_string(v)),
            other => other.clone(),
        }
    }

    /// The abstract relational comparison `a < b`: `None` is JavaScript's
    /// `undefined` (a NaN was involved), which makes every comparison false.
    pub fn less_than(a: &Value, b: &Value) -> Option<bool> {
        let (pa, pb) = (to_primitive(a), to_primitive(b));
        if let (Value::String(x), Value::String(y)) = (&pa, &pb) {
            return Some(cmp_utf16(x, y) == Ordering::Less);
        }
        let (x, y) = (to_number(&pa), to_number(&pb));
        if x.is_nan() || y.is_nan() {
            None
        } else {
            Some(x < y)
        }
    }

    /// String comparison by UTF-16 code units, as JavaScript compares strings.
    pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
        a.encode_utf16().cmp(b.encode_utf16())
    }

    /// `===`: primitives by type and value; two parsed arrays or objects are
    /// never the same reference, so never equal.
    pub fn strict_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::String(x), Value::String(y)) => x == y,
            _ => false,
        }
    }

    /// `JSON.stringify(a) === JSON.stringify(b)`: structural, and ordered for
    /// object keys as JavaScript serialises them in insertion order.
    pub fn stringify_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| stringify_eq(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((kx, vx), (ky, vy))| kx == ky && stringify_eq(vx, vy))
            }
            _ => strict_eq(a, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(cond: Value, attrs: Value) -> bool {
        Condition::compile(&cond).matches(&attrs)
    }

    #[test]
    fn nested_paths_reach_into_objects_and_arrays() {
        assert!(check(
            json!({"survey.q1": "yes"}),
            json!({"survey": {"q1": "yes"}})
        ));
        assert!(check(json!({"list.1": 5}), json!({"list": [4, 5]})));
        assert!(!check(json!({"list.01": 5}), json!({"list": [4, 5]})));
    }

    #[test]
    fn js_number_formatting_matches_javascript() {
        assert_eq!(js::number_to_string(1.0), "1");
        assert_eq!(js::number_to_string(0.1), "0.1");
        assert_eq!(js::number_to_string(1e21), "1e+21");
        assert_eq!(js::number_to_string(1e-7), "1e-7");
        assert!(check(json!({"n": "10"}), json!({"n": 10.0})));
    }

    #[test]
    fn validation_finds_every_problem_with_its_pointer() {
        let problems = validate(
            &json!({"a": {"$regx": 1}, "b": {"$regex": "("}, "$or": {"x": 1}, "c": {"$in": 3}}),
            "/rules/0/condition",
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/rules/0/condition/a/$regx",
                "/rules/0/condition/b/$regex",
                "/rules/0/condition/$or",
                "/rules/0/condition/c/$in"
            ]
        );
        assert_eq!(validate(&json!([1]), "/c").len(), 1);
        assert!(validate(&json!({"$groups": {"$elemMatch": {"$eq": "a"}}}), "").is_empty());
        assert!(validate(&json!({"a": {"$gt": 1, "b": 2}}), "").is_empty());
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-100i64..100).prop_map(Value::from),
            (-1.0e3f64..1.0e3).prop_map(Value::from),
            "[a-c0-9.]{0,4}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c$]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn evaluation_never_panics_on_any_condition_or_attributes(cond in json_value(), attrs in json_value()) {
            let _ = Condition::compile(&cond).matches(&attrs);
            let _ = validate(&cond, "");
        }

        #[test]
        fn not_is_the_complement(cond in json_value(), attrs in json_value()) {
            if let Value::Object(_) = cond {
                let plain = Condition::compile(&cond).matches(&attrs);
                let negated = Condition::compile(&json!({"$not": cond})).matches(&attrs);
                prop_assert_eq!(plain, !negated);
            }
        }

        #[test]
        fn and_of_two_is_both(a in json_value(), b in json_value(), attrs in json_value()) {
            if let (Value::Object(_), Value::Object(_)) = (&a, &b) {
                let both = Condition::compile(&json!({"$and": [a.clone(), b.clone()]})).matches(&attrs);
                prop_assert_eq!(both, Condition::compile(&a).matches(&attrs) && Condition::compile(&b).matches(&attrs));
            }
        }
    }
}
