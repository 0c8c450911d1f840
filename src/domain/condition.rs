//! The condition language (§6): GrowthBook's `evalCondition`.
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
//!
//! Bounded work (§1): [`validate`] refuses conditions over
//! [`limits::MAX_CONDITION_BYTES`], `$in`-style lists over
//! [`limits::MAX_LIST_ENTRIES`], and patterns that together compile to more
//! than [`limits::MAX_CONDITION_PATTERN_BYTES`]. Membership (`$in`, `$nin`,
//! `$ini`, `$nini`) and the literal tests of `$all`/`$alli` are set lookups,
//! and version operators stop at the first difference, so their cost is the
//! operand plus the attribute, not their product. What remains proportional
//! to condition × attributes is inherent in the language: every clause may
//! look at every item of an array attribute (`$elemMatch`, the operator tests
//! of `$all`, many clauses on one array).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use serde_json::{Map, Value};

use super::limits;
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
        members: Members,
        negate: bool,
    },
    Not(Box<Test>),
    Size(Box<Test>),
    ElemMatch(ElemMatch),
    All(Box<AllOf>),
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

/// The list of an `$in`-style operator as a set of `===` identities.
///
/// `===` (what GrowthBook's `isIn` uses) is an equivalence on the values it
/// can find equal: null, booleans, numbers by value (so `1` and `1.0` are
/// one, and so are `0` and `-0`; JSON holds no NaN) and strings by content,
/// or by lowercase content for `$ini`/`$nini`. Arrays and objects are never
/// `===` to anything parsed, so they are left out: the set answers exactly
/// what comparing with every entry would, in one lookup.
#[derive(Debug, Clone)]
struct Members {
    null: bool,
    /// `[false, true]`: whether each boolean is listed.
    bools: [bool; 2],
    numbers: Set<u64>,
    strings: Set<String>,
    /// Compare strings by their lowercase forms.
    insensitive: bool,
}

impl Members {
    fn new(list: &[Value], insensitive: bool) -> Self {
        let (mut null, mut bools) = (false, [false; 2]);
        let mut numbers = HashSet::new();
        let mut strings = HashSet::new();
        for value in list {
            match value {
                Value::Null => null = true,
                Value::Bool(b) => bools[usize::from(*b)] = true,
                Value::Number(n) => {
                    if let Some(key) = number_key(js::number(n)) {
                        numbers.insert(key);
                    }
                }
                Value::String(s) => {
                    strings.insert(if insensitive {
                        s.to_lowercase()
                    } else {
                        s.clone()
                    });
                }
                Value::Array(_) | Value::Object(_) => {}
            }
        }
        Self {
            null,
            bools,
            numbers: Set::new(numbers),
            strings: Set::new(strings),
            insensitive,
        }
    }

    /// Is `value` `===` (or, insensitively, equal in lowercase) to an entry?
    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::Null => self.null,
            Value::Bool(b) => self.bools[usize::from(*b)],
            Value::Number(n) => {
                number_key(js::number(n)).is_some_and(|key| self.numbers.contains(&key))
            }
            Value::String(s) if self.insensitive => self.strings.contains(&s.to_lowercase()),
            Value::String(s) => self.strings.contains(s.as_str()),
            Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// A set that scans a handful of entries (cheaper than hashing, and the
/// common case: `{"plan": {"$in": ["business", "enterprise"]}}`) and hashes
/// more, so a lookup never costs more than a few comparisons.
#[derive(Debug, Clone)]
enum Set<T> {
    Few(Vec<T>),
    Many(HashSet<T>),
}

/// Up to this many entries, [`Set`] scans.
const FEW: usize = 8;

impl<T: Eq + std::hash::Hash> Set<T> {
    fn new(entries: HashSet<T>) -> Self {
        if entries.len() <= FEW {
            Set::Few(entries.into_iter().collect())
        } else {
            Set::Many(entries)
        }
    }

    fn contains<Q>(&self, entry: &Q) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        match self {
            Set::Few(entries) => entries.iter().any(|e| e.borrow() == entry),
            Set::Many(entries) => entries.contains(entry),
        }
    }
}

/// A number's identity under `==` between numbers: its bits, with `-0`
/// folded into `0`; NaN equals nothing, so it has none.
fn number_key(n: f64) -> Option<u64> {
    if n.is_nan() {
        None
    } else if n == 0.0 {
        Some(0.0f64.to_bits())
    } else {
        Some(n.to_bits())
    }
}

/// `$all`/`$alli`: every test holds for some item of the array.
///
/// Tests are pure, so their order does not change the answer; the literal
/// ones (a string, a number, a boolean or null, by far the common case) are
/// answered from one pass over the items instead of one pass per test.
#[derive(Debug, Clone)]
struct AllOf {
    insensitive: bool,
    /// `Test::Str` values (lowercased for `$alli`), without repeats.
    strings: Vec<String>,
    /// `Test::Num` values as [`number_key`]s, without repeats. A NaN test
    /// (impossible from JSON) holds for no item, so it makes the list fail.
    numbers: Vec<Option<u64>>,
    /// `Test::Null`, `Test::Bool(true)`, `Test::Bool(false)` present.
    null: bool,
    truthy: bool,
    falsy: bool,
    /// Every other test, checked against each item as GrowthBook does.
    others: Vec<Test>,
}

/// Below this many (test, item) pairs a plain scan beats building a set.
const SCAN_PAIRS: usize = 64;

impl AllOf {
    fn new(items: &[Value], insensitive: bool, budget: &mut usize) -> Self {
        let mut all = Self {
            insensitive,
            strings: Vec::new(),
            numbers: Vec::new(),
            null: false,
            truthy: false,
            falsy: false,
            others: Vec::new(),
        };
        let mut seen_strings = HashSet::new();
        let mut seen_numbers = HashSet::new();
        for item in items {
            match compile_test(item, budget) {
                Test::Str(s) => {
                    let s = if insensitive { s.to_lowercase() } else { s };
                    if seen_strings.insert(s.clone()) {
                        all.strings.push(s);
                    }
                }
                Test::Num(n) => {
                    let key = number_key(n);
                    if seen_numbers.insert(key) {
                        all.numbers.push(key);
                    }
                }
                Test::Null => all.null = true,
                Test::Bool(true) => all.truthy = true,
                Test::Bool(false) => all.falsy = true,
                other => all.others.push(other),
            }
        }
        all
    }

    fn holds(&self, items: &[Value]) -> bool {
        // `Test::Null` and `Test::Bool`, as `Test::holds` defines them.
        if self.null && !items.iter().any(Value::is_null) {
            return false;
        }
        if self.truthy && !items.iter().any(|i| !i.is_null() && truthy(i)) {
            return false;
        }
        if self.falsy && !items.iter().any(|i| !i.is_null() && !truthy(i)) {
            return false;
        }
        self.numbers_hold(items)
            && self.strings_hold(items)
            && self
                .others
                .iter()
                .all(|test| items.iter().any(|item| test.holds(item, self.insensitive)))
    }

    /// `Test::Num`: `Number(item) == n` for some item.
    fn numbers_hold(&self, items: &[Value]) -> bool {
        if self.numbers.is_empty() {
            return true;
        }
        let key = |item: &Value| number_key(js::to_number(item));
        if self.numbers.len() * items.len() <= SCAN_PAIRS {
            return self
                .numbers
                .iter()
                .all(|n| n.is_some() && items.iter().any(|item| key(item) == *n));
        }
        let have: HashSet<u64> = items.iter().filter_map(key).collect();
        self.numbers
            .iter()
            .all(|n| n.is_some_and(|n| have.contains(&n)))
    }

    /// `Test::Str`: `String(item) === s` (both lowercased for `$alli`) for
    /// some item.
    fn strings_hold(&self, items: &[Value]) -> bool {
        if self.strings.is_empty() {
            return true;
        }
        let text = |item: &Value| -> String {
            let s = js::to_str(item);
            if self.insensitive {
                s.to_lowercase()
            } else {
                s.into_owned()
            }
        };
        if self.strings.len() * items.len() <= SCAN_PAIRS {
            let texts: Vec<String> = items.iter().map(text).collect();
            return self.strings.iter().all(|s| texts.contains(s));
        }
        let have: HashSet<String> = items.iter().map(text).collect();
        self.strings.iter().all(|s| have.contains(s))
    }
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
    let size = limits::json_size(value);
    if size > limits::MAX_CONDITION_BYTES {
        // Nothing inside is examined: the condition is refused anyway, and
        // compiling the patterns of an unbounded one is the very work the
        // limit is there to bound.
        return vec![Problem::new(
            path,
            format!(
                "is {size} bytes of JSON; the limit is {}",
                limits::MAX_CONDITION_BYTES
            ),
        )];
    }
    let mut out = Check {
        problems: Vec::new(),
        budget: limits::MAX_CONDITION_PATTERN_BYTES,
    };
    match value {
        Value::Object(map) => validate_condition(map, path, &mut out),
        _ => out.push(Problem::new(path, "a condition must be a JSON object")),
    }
    if out.problems.is_empty() {
        if let Err(problem) = check_cost(&Condition::compile(value).cost(), path) {
            out.push(problem);
        }
    }
    out.problems
}

/// Refuses work over [`limits::MAX_EVALUATION_COST`] at `path`, naming the
/// limit: for one condition, or for the conditions of a document together.
pub fn check_cost(cost: &u64, path: &str) -> Result<(), Problem> {
    if *cost <= limits::MAX_EVALUATION_COST {
        return Ok(());
    }
    Err(Problem::new(
        path,
        format!(
            "could take {cost} steps to evaluate against the largest allowed attributes; \
             the limit is {} (use fewer $elemMatch, $all or $in over arrays, or fewer conditions)",
            limits::MAX_EVALUATION_COST
        ),
    ))
}

/// What validation collects as it walks a condition.
struct Check {
    problems: Vec<Problem>,
    /// Bytes of compiled patterns the condition may still hold.
    budget: usize,
}

impl Check {
    fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }
}

fn validate_condition(map: &Map<String, Value>, path: &str, out: &mut Check) {
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

fn validate_value(value: &Value, path: &str, out: &mut Check) {
    let Value::Object(map) = value else { return };
    if !is_operator_object(map) {
        return;
    }
    for (op, arg) in map {
        let here = pointer(path, op);
        match op.as_str() {
            "$in" | "$nin" | "$ini" | "$nini" => match arg {
                Value::Array(items) => check_list_length(items, &here, out),
                _ => out.push(Problem::new(here, format!("{op} takes an array"))),
            },
            "$all" | "$alli" => match arg {
                Value::Array(items) => {
                    check_list_length(items, &here, out);
                    for (i, item) in items.iter().enumerate() {
                        validate_value(item, &pointer(&here, i), out);
                    }
                }
                _ => out.push(Problem::new(here, format!("{op} takes an array"))),
            },
            "$regex" | "$regexi" => match arg {
                Value::String(pattern) => {
                    if let Err(e) = build_regex(pattern, op == "$regexi", &mut out.budget) {
                        out.push(Problem::new(here, e));
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

/// `$in`-style lists hold at most [`limits::MAX_LIST_ENTRIES`] entries.
fn check_list_length(items: &[Value], path: &str, out: &mut Check) {
    if items.len() > limits::MAX_LIST_ENTRIES {
        out.push(Problem::new(
            path,
            format!(
                "has {} entries; the limit is {}",
                items.len(),
                limits::MAX_LIST_ENTRIES
            ),
        ));
    }
}

/// Compiles a `$regex`/`$regexi` pattern as the `regex` crate's `Regex::new`
/// does (this is its engine, with its options), within `budget` bytes.
///
/// Contract §1 bounds the work and the memory a stored condition costs, and
/// the length of a pattern says little about either: the 7 bytes `\w{20}`
/// compile to over a megabyte, so 64 KiB of such patterns held gigabytes. So
/// every pattern of a condition draws its compiled size from one budget.
/// A build that fails at a size limit did about that much work first, so the
/// limit is drawn too: failing patterns cannot cost more than the budget
/// either.
fn build_regex(pattern: &str, insensitive: bool, budget: &mut usize) -> Result<Regex, String> {
    let limit = (*budget).min(limits::MAX_PATTERN_BYTES);
    let built = meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(limit))
                .utf8_empty(true),
        )
        .syntax(
            syntax::Config::new()
                .case_insensitive(insensitive)
                .utf8(true),
        )
        .build(pattern);
    let over_budget = || {
        format!(
            "the condition's regular expressions compile to more than {} bytes, the limit",
            limits::MAX_CONDITION_PATTERN_BYTES
        )
    };
    match built {
        Ok(re) => {
            let size = re.memory_usage();
            if size <= *budget {
                *budget -= size;
                Ok(re)
            } else {
                *budget = 0;
                Err(over_budget())
            }
        }
        Err(e) => match e.syntax_error() {
            Some(syntax) => Err(format!("invalid regular expression: {syntax}")),
            None => {
                *budget = budget.saturating_sub(limit);
                if limit < limits::MAX_PATTERN_BYTES {
                    Err(over_budget())
                } else {
                    Err(format!(
                        "the regular expression compiles to more than {} bytes, the limit for one",
                        limits::MAX_PATTERN_BYTES
                    ))
                }
            }
        },
    }
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
    ///
    /// Patterns draw on the same budget as in [`validate`], so a condition
    /// that passed validation compiles every one of its patterns; past the
    /// budget a pattern evaluates to false, like an invalid one.
    pub fn compile(value: &Value) -> Self {
        let mut budget = limits::MAX_CONDITION_PATTERN_BYTES;
        compile_with(value, &mut budget)
    }

    /// Does the condition hold for these attributes?
    pub fn matches(&self, attributes: &Value) -> bool {
        self.clauses.iter().all(|c| c.holds(attributes))
    }
}

/// [`Condition::compile`] with `budget` bytes left for compiled patterns.
fn compile_with(value: &Value, budget: &mut usize) -> Condition {
    match value {
        Value::Object(map) => compile_condition(map, budget),
        // GrowthBook iterates the entries of whatever it is given; a
        // non-object has none that can hold, so treat it as never.
        _ => Condition {
            clauses: vec![Clause::Never],
        },
    }
}

fn compile_condition(map: &Map<String, Value>, budget: &mut usize) -> Condition {
    fn list(v: &Value, budget: &mut usize) -> Option<Vec<Condition>> {
        v.as_array()
            .map(|items| items.iter().map(|c| compile_with(c, budget)).collect())
    }
    let mut clauses = Vec::with_capacity(map.len());
    for (key, value) in map {
        clauses.push(match key.as_str() {
            "$or" => list(value, budget).map_or(Clause::Never, Clause::Or),
            "$nor" => list(value, budget).map_or(Clause::Never, Clause::Nor),
            "$and" => list(value, budget).map_or(Clause::Never, Clause::And),
            "$not" => Clause::Not(Box::new(compile_with(value, budget))),
            _ => Clause::Field {
                path: key.split('.').map(str::to_owned).collect(),
                test: compile_test(value, budget),
            },
        });
    }
    Condition { clauses }
}

fn compile_test(value: &Value, budget: &mut usize) -> Test {
    match value {
        Value::String(s) => Test::Str(s.clone()),
        Value::Number(n) => Test::Num(js::number(n)),
        Value::Bool(b) => Test::Bool(*b),
        Value::Null => Test::Null,
        Value::Object(map) if is_operator_object(map) => Test::Ops(
            map.iter()
                .map(|(op, arg)| compile_op(op, arg, budget))
                .collect(),
        ),
        other => Test::Literal(other.clone()),
    }
}

fn compile_op(op: &str, arg: &Value, budget: &mut usize) -> Op {
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
        // The operand's primitive is taken once here rather than on every
        // comparison: stringifying a large array operand each time would
        // multiply its size by the attributes'.
        "$lt" => Op::Compare(Cmp::Lt, js::to_primitive(arg).into_owned()),
        "$lte" => Op::Compare(Cmp::Lte, js::to_primitive(arg).into_owned()),
        "$gt" => Op::Compare(Cmp::Gt, js::to_primitive(arg).into_owned()),
        "$gte" => Op::Compare(Cmp::Gte, js::to_primitive(arg).into_owned()),
        "$exists" => Op::Exists(truthy(arg)),
        "$in" | "$nin" | "$ini" | "$nini" => match arg {
            Value::Array(list) => Op::In {
                members: Members::new(list, op.ends_with('i')),
                negate: op.starts_with("$n"),
            },
            _ => Op::Never,
        },
        "$all" | "$alli" => match arg {
            Value::Array(items) => Op::All(Box::new(AllOf::new(items, op == "$alli", budget))),
            _ => Op::Never,
        },
        "$not" => Op::Not(Box::new(compile_test(arg, budget))),
        "$size" => Op::Size(Box::new(compile_test(arg, budget))),
        "$elemMatch" => match arg {
            Value::Object(map) if is_operator_object(map) => {
                Op::ElemMatch(ElemMatch::Value(Box::new(compile_test(arg, budget))))
            }
            _ => Op::ElemMatch(ElemMatch::Object(Box::new(compile_with(arg, budget)))),
        },
        "$regex" | "$regexi" => match arg
            .as_str()
            .map(|p| build_regex(p, op == "$regexi", budget))
        {
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

// ---------------------------------------------------------------- cost

/// Items the attributes can hold within their size limit (`[0,0,…]`), in
/// all their arrays together.
const MAX_ITEMS: u64 = (limits::MAX_ATTRIBUTES_BYTES / 2) as u64;
/// A test that may stringify or compare a whole value (of up to 16 KiB, or
/// the items of one array together) costs this much beyond its visits, at
/// about 64 bytes read for the time of one visit.
const WHOLE_VALUE: u64 = (limits::MAX_ATTRIBUTES_BYTES / 64) as u64;

impl Condition {
    /// An upper bound on the work of one evaluation against the largest
    /// attributes §1 allows, in visits (one test of one value or array item,
    /// tens of nanoseconds at worst). Bounding it when a condition is stored
    /// bounds every evaluation, whatever the attributes.
    ///
    /// The model: a test outside any array scan runs once; inside one
    /// (`$elemMatch`, the non-literal tests of `$all`, and `$in` over an
    /// array attribute) it may run once per item, and the items of all the
    /// attributes' arrays together are at most [`MAX_ITEMS`], however they
    /// nest. A test that reads a whole value reads at most the attributes'
    /// bytes in all, once per test.
    pub fn cost(&self) -> u64 {
        self.cost_in(false)
    }

    fn cost_in(&self, scanning: bool) -> u64 {
        sum(&self.clauses, |c| c.cost(scanning))
    }
}

fn sum<T>(items: &[T], cost: impl Fn(&T) -> u64) -> u64 {
    items
        .iter()
        .fold(0u64, |sum, item| sum.saturating_add(cost(item)))
}

/// One visit of a test: once, or once per item inside an array scan.
fn visit(scanning: bool) -> u64 {
    if scanning {
        MAX_ITEMS
    } else {
        1
    }
}

impl Clause {
    fn cost(&self, scanning: bool) -> u64 {
        let here = visit(scanning);
        match self {
            Clause::Or(list) | Clause::Nor(list) | Clause::And(list) => {
                sum(list, |c| c.cost_in(scanning)).saturating_add(here)
            }
            Clause::Not(inner) => inner.cost_in(scanning).saturating_add(here),
            Clause::Never => here,
            Clause::Field { test, .. } => test.cost(scanning).saturating_add(here),
        }
    }
}

impl Test {
    fn cost(&self, scanning: bool) -> u64 {
        let here = visit(scanning);
        match self {
            Test::Bool(_) | Test::Null => here,
            Test::Str(_) | Test::Num(_) | Test::Literal(_) => here.saturating_add(WHOLE_VALUE),
            Test::Ops(ops) => sum(ops, |op| op.cost(scanning)),
        }
    }
}

impl Op {
    fn cost(&self, scanning: bool) -> u64 {
        let here = visit(scanning);
        match self {
            Op::Exists(_) | Op::Type(_) | Op::Never | Op::Eq(_) | Op::Ne(_) => here,
            Op::Version(..) | Op::Compare(..) | Op::Regex(_) => here.saturating_add(WHOLE_VALUE),
            // One set lookup per item of an array attribute.
            Op::In { .. } => MAX_ITEMS.saturating_add(here),
            Op::Not(test) | Op::Size(test) => test.cost(scanning).saturating_add(here),
            Op::ElemMatch(ElemMatch::Value(test)) => MAX_ITEMS.saturating_add(test.cost(true)),
            Op::ElemMatch(ElemMatch::Object(condition)) => {
                MAX_ITEMS.saturating_add(condition.cost_in(true))
            }
            // The literal tests are answered in one pass over the items;
            // every other test may visit every item.
            Op::All(all) => MAX_ITEMS.saturating_add(sum(&all.others, |t| t.cost(true))),
        }
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
                    js::to_str(value).to_lowercase() == s.to_lowercase()
                } else {
                    js::to_str(value) == s.as_str()
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
                let ord = PaddedVersion::new(&version_text(actual))
                    .flat_map(utf16)
                    .cmp(expected.encode_utf16());
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
            Op::In { members, negate } => is_in(actual, members) != *negate,
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
            Op::All(all) => match actual {
                Value::Array(items) => all.holds(items),
                _ => false,
            },
            Op::Regex(re) => re.is_match(js::to_str(actual).as_ref()),
            Op::Type(expected) => js::type_of(actual) == expected,
            Op::Never => false,
        }
    }
}

/// GrowthBook's `isIn`: an array attribute is in the list when one of its
/// items is; any other value when it is itself.
fn is_in(actual: &Value, members: &Members) -> bool {
    match actual {
        Value::Array(items) => items.iter().any(|item| members.contains(item)),
        _ => members.contains(actual),
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

/// The text a version operand stands for: a number's JavaScript string, a
/// non-empty string itself, anything else "0" (GrowthBook's
/// `paddedVersionString` input).
fn version_text(input: &Value) -> Cow<'_, str> {
    match input {
        Value::Number(_) => js::to_str(input),
        Value::String(s) if !s.is_empty() => Cow::Borrowed(s),
        _ => Cow::Borrowed("0"),
    }
}

/// GrowthBook's `paddedVersionString` of a condition's operand, built once.
fn padded_version(input: &Value) -> String {
    PaddedVersion::new(&version_text(input)).collect()
}

/// `paddedVersionString(raw)`, one char at a time: strip a leading `v` and
/// the build info (`+…`), split on `.` and `-`, mark a release (3 parts)
/// with a `~` part so that it sorts after its pre-releases, left-pad numeric
/// parts to 5 characters so that strings compare as numbers, join with `-`.
///
/// It is lazy so that comparing an attribute with a version stops at the
/// first difference: a long attribute then costs each version operator its
/// common prefix with the operand (which the condition's size bounds), not
/// its own length. Padding only needs to look 5 bytes ahead, and whether
/// there were exactly 3 parts is only known, and only needed, at the end.
struct PaddedVersion<'a> {
    /// What is left of the raw text.
    rest: &'a str,
    /// Parts begun so far.
    parts: usize,
    step: Step,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// At the start of a part: decide its padding.
    Head,
    /// This many spaces of padding are still to come.
    Pad(usize),
    /// Inside a part.
    Body,
    /// After the `-` that precedes the release marker.
    Tilde,
    Done,
}

impl<'a> PaddedVersion<'a> {
    fn new(raw: &'a str) -> Self {
        Self {
            rest: raw.strip_prefix('v').unwrap_or(raw),
            parts: 0,
            step: Step::Head,
        }
    }
}

fn ends_part(b: u8) -> bool {
    matches!(b, b'-' | b'.' | b'+')
}

impl Iterator for PaddedVersion<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        loop {
            match self.step {
                Step::Head => {
                    self.parts += 1;
                    // Digits are ASCII, so a part shorter than 5 bytes is
                    // the only kind that gets padding.
                    let bytes = self.rest.as_bytes();
                    let len = bytes.iter().take(5).take_while(|&&b| !ends_part(b)).count();
                    let numeric = len > 0 && bytes[..len].iter().all(u8::is_ascii_digit);
                    self.step = if numeric && len < 5 {
                        Step::Pad(5 - len)
                    } else {
                        Step::Body
                    };
                }
                Step::Pad(n) => {
                    self.step = if n > 1 { Step::Pad(n - 1) } else { Step::Body };
                    return Some(' ');
                }
                Step::Body => match self.rest.chars().next() {
                    Some(c @ ('-' | '.')) => {
                        self.rest = &self.rest[c.len_utf8()..];
                        self.step = Step::Head;
                        return Some('-');
                    }
                    Some(c) if c != '+' => {
                        self.rest = &self.rest[c.len_utf8()..];
                        return Some(c);
                    }
                    // The end, or build info, which is ignored.
                    _ if self.parts == 3 => {
                        self.step = Step::Tilde;
                        return Some('-');
                    }
                    _ => self.step = Step::Done,
                },
                Step::Tilde => {
                    self.step = Step::Done;
                    return Some('~');
                }
                Step::Done => return None,
            }
        }
    }
}

/// The UTF-16 code units of one char, as JavaScript stores it.
fn utf16(c: char) -> impl Iterator<Item = u16> {
    let mut units = [0u16; 2];
    let len = c.encode_utf16(&mut units).len();
    units.into_iter().take(len)
}

/// The JavaScript value semantics GrowthBook's reference implementation relies on.
mod js {
    use std::borrow::Cow;
    use std::cmp::Ordering;

    use serde_json::Value;

    /// `typeof`, with arrays and null told apart as GrowthBook's `getType` does.
    pub(super) fn type_of(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Object(_) => "object",
        }
    }

    /// A JSON number as JavaScript holds it (serde_json without
    /// `arbitrary_precision` always has an f64 view; NaN is unreachable).
    pub(super) fn number(n: &serde_json::Number) -> f64 {
        n.as_f64().unwrap_or(f64::NAN)
    }

    /// `String(v)` (equivalently `v + ""`), borrowing when `v` is a string.
    pub(super) fn to_str(v: &Value) -> Cow<'_, str> {
        match v {
            Value::String(s) => Cow::Borrowed(s),
            Value::Null => Cow::Borrowed("null"),
            Value::Bool(true) => Cow::Borrowed("true"),
            Value::Bool(false) => Cow::Borrowed("false"),
            Value::Object(_) => Cow::Borrowed(OBJECT),
            Value::Number(n) => Cow::Owned(number_to_string(number(n))),
            Value::Array(_) => {
                let mut out = String::new();
                write_string(v, &mut out);
                Cow::Owned(out)
            }
        }
    }

    const OBJECT: &str = "[object Object]";

    /// Appends `String(v)` to `out`. One buffer for the whole value: joining
    /// each nested array's own string would copy deep values once per level.
    fn write_string(v: &Value, out: &mut String) {
        match v {
            // `Array.prototype.join` writes null (and undefined) items as "".
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !item.is_null() {
                        write_string(item, out);
                    }
                }
            }
            other => out.push_str(&to_str(other)),
        }
    }

    /// `Number::toString` for the values JSON can hold.
    pub(super) fn number_to_string(f: f64) -> String {
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
    pub(super) fn to_number(v: &Value) -> f64 {
        match v {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Number(n) => number(n),
            Value::String(s) => string_to_number(s),
            Value::Array(_) | Value::Object(_) => string_to_number(&to_str(v)),
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

    /// `ToPrimitive`: arrays and objects become strings, the rest stay
    /// (borrowed: a comparison copies nothing).
    pub(super) fn to_primitive(v: &Value) -> Cow<'_, Value> {
        match v {
            Value::Array(_) | Value::Object(_) => Cow::Owned(Value::String(to_str(v).into_owned())),
            other => Cow::Borrowed(other),
        }
    }

    /// The abstract relational comparison `a < b`: `None` is JavaScript's
    /// `undefined` (a NaN was involved), which makes every comparison false.
    pub(super) fn less_than(a: &Value, b: &Value) -> Option<bool> {
        let (pa, pb) = (to_primitive(a), to_primitive(b));
        if let (Value::String(x), Value::String(y)) = (pa.as_ref(), pb.as_ref()) {
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
    pub(super) fn cmp_utf16(a: &str, b: &str) -> Ordering {
        a.encode_utf16().cmp(b.encode_utf16())
    }

    /// `===`: primitives by type and value; two parsed arrays or objects are
    /// never the same reference, so never equal.
    pub(super) fn strict_eq(a: &Value, b: &Value) -> bool {
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
    pub(super) fn stringify_eq(a: &Value, b: &Value) -> bool {
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

/// The document schema of a stored condition: the OpenAPI document's
/// `Condition` (written out by `http::openapi`, since JSON Schema states the
/// recursive language better than a Rust type can).
pub fn stored_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::{Ref, RefOr};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(RefOr::Ref(Ref::from_schema_name("Condition")))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
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
    fn ordinary_conditions_cost_little_and_array_scans_cost_their_items() {
        let cost = |c: Value| Condition::compile(&c).cost();
        assert_eq!(cost(json!({})), 0);
        assert!(cost(json!({"plan": "business"})) < 1_000);
        assert!(cost(json!({"plan": {"$in": ["business", "enterprise"]}})) < 10_000);
        // A scan multiplies the tests inside it by the items, once however
        // deep it nests (the items of all arrays together are bounded).
        let one = cost(json!({"tags": {"$elemMatch": {"$gt": 5}}}));
        let nested = cost(json!({"tags": {"$elemMatch": {"$elemMatch": {"$gt": 5}}}}));
        assert!(one > MAX_ITEMS && one < 3 * MAX_ITEMS, "{one}");
        assert!(nested < 4 * MAX_ITEMS, "{nested}");
    }

    #[test]
    fn a_condition_over_the_work_limit_is_refused_naming_it() {
        let scans: Vec<Value> = (0..300)
            .map(|i| json!({format!("f{i}"): {"$elemMatch": {"$gt": i}}}))
            .collect();
        let problems = validate(&json!({"$and": scans}), "/condition");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "/condition");
        assert!(
            problems[0].message.contains("2000000"),
            "{}",
            problems[0].message
        );
        let fewer: Vec<Value> = (0..100)
            .map(|i| json!({format!("f{i}"): {"$elemMatch": {"$gt": i}}}))
            .collect();
        assert!(validate(&json!({"$and": fewer}), "/condition").is_empty());
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

    #[test]
    fn lists_over_the_entry_limit_are_refused_naming_the_limit() {
        let at_limit = vec![json!(0); limits::MAX_LIST_ENTRIES];
        let over = vec![json!(0); 20_000];
        for op in ["$in", "$nin", "$ini", "$nini", "$all", "$alli"] {
            assert!(validate(&json!({"a": {op: at_limit}}), "/c").is_empty());
            let problems = validate(&json!({"a": {op: over}}), "/c");
            assert_eq!(problems.len(), 1, "{op}");
            assert_eq!(problems[0].path, format!("/c/a/{op}"));
            assert_eq!(problems[0].message, "has 20000 entries; the limit is 10000");
        }
        // Wherever the list sits: under $not, $elemMatch, inside $all.
        let nested = json!({"a": {"$not": {"$elemMatch": {"$all": [{"$in": over}]}}}});
        let problems = validate(&nested, "");
        assert_eq!(problems[0].path, "/a/$not/$elemMatch/$all/0/$in");
    }

    #[test]
    fn a_condition_over_the_size_limit_is_refused_at_its_pointer() {
        let fits = json!({"a": "x".repeat(limits::MAX_CONDITION_BYTES - 8)});
        assert_eq!(limits::json_size(&fits), limits::MAX_CONDITION_BYTES);
        assert!(validate(&fits, "/rules/0/condition").is_empty());
        let over = json!({"a": "x".repeat(limits::MAX_CONDITION_BYTES), "b": {"$regx": 1}});
        let problems = validate(&over, "/rules/0/condition");
        assert_eq!(problems.len(), 1, "nothing inside is examined");
        assert_eq!(problems[0].path, "/rules/0/condition");
        assert!(problems[0].message.contains("the limit is 65536"));
    }

    #[test]
    fn the_patterns_of_a_condition_share_one_compiled_size_budget() {
        // `\w{20}` compiles to about a megabyte: a few fit in the budget, the
        // rest are refused naming it.
        let heavy: Vec<Value> = (0..10)
            .map(|i| json!({"a": {"$regex": format!("\\w{{20}}{i}")}}))
            .collect();
        let problems = validate(&json!({"$and": heavy}), "/c");
        assert!(!problems.is_empty() && problems.len() < 10, "{problems:?}");
        assert!(problems.iter().all(|p| p.message.contains("4194304")));
        assert_eq!(problems.last().unwrap().path, "/c/$and/9/a/$regex");

        // Ordinary patterns are far from it; one pattern over its own limit
        // says so.
        let ordinary = json!({"email": {"$regex": "^[\\w.+-]+@[\\w-]+\\.[\\w.]+$"},
                              "browser": {"$regexi": "^(chrome|firefox|safari)"}});
        assert!(validate(&ordinary, "").is_empty());
        let huge = validate(&json!({"a": {"$regex": "\\w{100}"}}), "");
        assert!(huge[0].message.contains("1048576"), "{huge:?}");

        // Compiling is total: past the budget a pattern evaluates to false,
        // as an invalid one does.
        let mut clauses: Vec<Value> = (0..6)
            .map(|i| json!({"a": {"$regex": format!("\\w{{20}}{i}")}}))
            .collect();
        clauses.push(json!({"a": {"$regex": "^x"}}));
        assert!(!check(json!({"$or": clauses}), json!({"a": "x"})));
        assert!(check(json!({"a": {"$regex": "^x"}}), json!({"a": "x"})));
    }

    #[test]
    fn membership_compares_numbers_by_value_and_strings_exactly_or_in_lowercase() {
        assert!(check(json!({"n": {"$in": [1.0]}}), json!({"n": 1})));
        assert!(check(json!({"n": {"$in": [-0.0]}}), json!({"n": 0})));
        assert!(check(json!({"n": {"$in": [0]}}), json!({"n": -0.0})));
        // Both are 2^64 as a JavaScript number.
        assert!(check(
            json!({"n": {"$in": [u64::MAX]}}),
            json!({"n": u64::MAX - 1})
        ));
        assert!(!check(json!({"n": {"$in": ["1"]}}), json!({"n": 1})));
        assert!(!check(json!({"n": {"$in": [[1]]}}), json!({"n": [[1]]})));
        assert!(!check(json!({"n": {"$in": [{}]}}), json!({"n": {}})));
        assert!(check(json!({"n": {"$in": [null]}}), json!({})));
        assert!(check(json!({"s": {"$ini": ["ΑΣ"]}}), json!({"s": "ας"})));
        assert!(!check(json!({"s": {"$in": ["A"]}}), json!({"s": "a"})));
        assert!(check(
            json!({"s": {"$nini": ["A"]}}),
            json!({"s": ["b", 1]})
        ));
        assert!(!check(
            json!({"s": {"$nini": ["A"]}}),
            json!({"s": ["b", "a"]})
        ));
    }

    #[test]
    fn version_comparison_stops_at_the_first_difference_and_still_sees_the_release_marker() {
        assert!(check(
            json!({"v": {"$vgt": "1.2.3-beta"}}),
            json!({"v": "1.2.3"})
        ));
        assert!(check(
            json!({"v": {"$veq": "v1.2.3+build"}}),
            json!({"v": "1.2.3"})
        ));
        assert!(check(
            json!({"v": {"$vlt": "1.10.0"}}),
            json!({"v": "1.9.9"})
        ));
        assert!(check(
            json!({"v": {"$vgt": "0"}}),
            json!({"v": "1.".repeat(8000)})
        ));
        assert_eq!(padded_version(&json!("1.2.3")), "    1-    2-    3-~");
        assert_eq!(padded_version(&json!(1.5)), "    1-    5");
        assert_eq!(padded_version(&json!(null)), "    0");
    }

    /// The code these fast paths replaced, kept to check them against.
    mod before {
        use super::super::{js, Test};
        use serde_json::Value;

        pub(super) fn to_string(v: &Value) -> String {
            match v {
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
                other => js::to_str(other).into_owned(),
            }
        }

        pub(super) fn is_in(actual: &Value, list: &[Value], insensitive: bool) -> bool {
            let same = |a: &Value, b: &Value| match (a, b) {
                (Value::String(x), Value::String(y)) if insensitive => {
                    x.to_lowercase() == y.to_lowercase()
                }
                _ => js::strict_eq(a, b),
            };
            match actual {
                Value::Array(items) => items.iter().any(|el| list.iter().any(|exp| same(el, exp))),
                _ => list.iter().any(|exp| same(actual, exp)),
            }
        }

        pub(super) fn all(tests: &[Test], items: &[Value], insensitive: bool) -> bool {
            tests
                .iter()
                .all(|test| items.iter().any(|item| test.holds(item, insensitive)))
        }

        pub(super) fn padded_version(raw: &str) -> String {
            let trimmed = raw.strip_prefix('v').unwrap_or(raw);
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
    }

    /// Values where `===`, lowercasing and JavaScript's coercions have
    /// corners: both zeros, integers beyond 2^53, numbers that are strings,
    /// letters whose lowercase depends on context.
    fn tricky_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            prop::sample::select(vec![
                json!(0),
                json!(-0.0),
                json!(0.0),
                json!(1),
                json!(1.0),
                json!(-1),
                json!(0.5),
                json!(u64::MAX),
                json!(u64::MAX - 1),
                json!(i64::MIN),
                json!(9_007_199_254_740_993u64),
                json!(9_007_199_254_740_992.0),
                json!(1e308),
                json!(5e-324),
            ]),
            prop::sample::select(vec![
                "", "a", "A", "b", "ß", "SS", "ss", "Σ", "σ", "ς", "ΑΣ", "ας", "1", "1.0", " 1 ",
                "0x10", "16", "-0", "true", "null", "İ", "i̇",
            ])
            .prop_map(Value::from),
        ]
    }

    fn tricky_value() -> impl Strategy<Value = Value> {
        tricky_leaf().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[ab$]{1,2}", inner, 0..2)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `$all` tests: mostly literals, some operator tests and literal arrays.
    fn all_test() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => tricky_leaf(),
            1 => tricky_leaf().prop_map(|v| json!({"$gt": v})),
            1 => any::<bool>().prop_map(|b| json!({"$exists": b})),
            1 => prop::collection::vec(tricky_leaf(), 0..2).prop_map(Value::Array),
        ]
    }

    proptest! {
        #[test]
        fn membership_by_set_answers_exactly_as_comparing_with_every_entry(
            list in prop::collection::vec(tricky_value(), 0..20),
            actual in tricky_value(),
            insensitive in any::<bool>(),
        ) {
            let members = Members::new(&list, insensitive);
            prop_assert_eq!(is_in(&actual, &members), before::is_in(&actual, &list, insensitive));
        }

        #[test]
        fn all_by_sets_answers_exactly_as_testing_every_item(
            tests in prop::collection::vec(all_test(), 0..12),
            items in prop::collection::vec(tricky_value(), 0..24),
            insensitive in any::<bool>(),
        ) {
            let mut budget = usize::MAX;
            let all = AllOf::new(&tests, insensitive, &mut budget);
            let compiled: Vec<Test> = tests.iter().map(|t| compile_test(t, &mut budget)).collect();
            prop_assert_eq!(all.holds(&items), before::all(&compiled, &items, insensitive));
        }

        #[test]
        fn javascript_strings_are_the_recursive_join(value in tricky_value()) {
            prop_assert_eq!(js::to_str(&value).into_owned(), before::to_string(&value));
        }

        #[test]
        fn lazy_padded_versions_are_the_eager_ones(
            a in "v?[0-9a-z.+~-]{0,14}|[0-9.]{0,8}|[0-9é.\u{10000}\u{e000}-]{0,6}",
            b in "v?[0-9a-z.+~-]{0,14}|[0-9.]{0,8}|[0-9é.\u{10000}\u{e000}-]{0,6}",
        ) {
            let lazy: String = PaddedVersion::new(&a).collect();
            prop_assert_eq!(&lazy, &before::padded_version(&a));
            let expected = before::padded_version(&b);
            let ord = PaddedVersion::new(&a).flat_map(utf16).cmp(expected.encode_utf16());
            prop_assert_eq!(ord, js::cmp_utf16(&before::padded_version(&a), &expected));
        }
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
