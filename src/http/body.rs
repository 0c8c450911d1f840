//! Request bodies: JSON text → [`Value`], with the rules of §1 that
//! apply to every string and number wherever it stands.
//!
//! * U+0000 in any string or object key is refused (PostgreSQL cannot store
//!   it in text, and both stores must behave alike).
//! * A number literal that overflows an `f64` (`1e400`) is valid JSON that
//!   breaks a rule, so it is a 422, not a 400.
//! * Nesting deeper than [`MAX_BODY_DEPTH`] is refused while parsing, so that
//!   nothing downstream (validation, condition compilation and evaluation)
//!   ever recurses over an unbounded tree.
//!
//! Each of these is reported with a JSON Pointer to where it was found. The
//! parser builds the value itself (a `DeserializeSeed` over serde_json's
//! parser) so the checks cost one pass, and the pointer is assembled only
//! when an error unwinds, so a valid body allocates nothing for it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::domain::limits::MAX_BODY_DEPTH;
use crate::domain::problem::pointer;

/// Why a body could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON at all (400).
    Syntax(String),
    /// JSON that breaks a rule of §1 at `path` (422).
    Invalid { path: String, message: String },
}

/// Parses a request body.
pub fn parse(bytes: &[u8]) -> Result<Value, BodyError> {
    let context = Context::default();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node {
        context: &context,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|e| context.classify(&e))
}

const NUL: &str = "must not contain U+0000 (the NUL character)";

#[derive(Default)]
struct Context {
    /// Pointer segments from the failing place outwards, pushed while an
    /// error unwinds through the containers that hold it.
    unwound: RefCell<Vec<String>>,
    /// The message of a §1 rule broken (our own errors, as opposed to
    /// serde_json's syntax errors).
    broken: RefCell<Option<String>>,
}

impl Context {
    fn refuse<E: de::Error>(&self, message: impl Into<String>) -> E {
        let message = message.into();
        let error = E::custom(&message);
        *self.broken.borrow_mut() = Some(message);
        error
    }

    fn path(&self) -> String {
        self.unwound
            .borrow()
            .iter()
            .rev()
            .fold(String::new(), |path, segment| pointer(&path, segment))
    }

    fn classify(&self, error: &serde_json::Error) -> BodyError {
        if let Some(message) = self.broken.borrow_mut().take() {
            return BodyError::Invalid {
                path: self.path(),
                message,
            };
        }
        // serde_json reports an overflowing literal as a syntax error; it is
        // valid JSON, so it is a broken rule (a test pins this wording).
        if error.to_string().starts_with("number out of range") {
            return BodyError::Invalid {
                path: self.path(),
                message:
                    "is a number too large to represent (numbers must be finite 64-bit floats)"
                        .to_owned(),
            };
        }
        BodyError::Syntax(error.to_string())
    }
}

/// The value at one place of the document, `depth` containers down.
#[derive(Clone, Copy)]
struct Node<'c> {
    context: &'c Context,
    depth: usize,
}

impl Node<'_> {
    fn child(self) -> Self {
        Self {
            context: self.context,
            depth: self.depth + 1,
        }
    }

    fn enter<E: de::Error>(self) -> Result<(), E> {
        if self.depth >= MAX_BODY_DEPTH {
            Err(self.context.refuse(format!(
                "is nested more than {MAX_BODY_DEPTH} levels deep; the limit is {MAX_BODY_DEPTH}"
            )))
        } else {
            Ok(())
        }
    }

    fn string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if s.contains('\0') {
            Err(self.context.refuse(NUL))
        } else {
            Ok(Value::String(s))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.context.refuse("must be a finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.string(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.string(v)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            match seq.next_element_seed(self.child()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.context
                        .unwound
                        .borrow_mut()
                        .push(items.len().to_string());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('\0') {
                self.context.unwound.borrow_mut().push(key);
                return Err(self.context.refuse(NUL));
            }
            match map.next_value_seed(self.child()) {
                Ok(value) => {
                    out.insert(key, value);
                }
                Err(e) => {
                    self.context.unwound.borrow_mut().push(key);
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn invalid(text: &str) -> (String, String) {
        match parse(text.as_bytes()) {
            Err(BodyError::Invalid { path, message }) => (path, message),
            other => panic!("{text}: expected a broken rule, got {other:?}"),
        }
    }

    #[test]
    fn valid_documents_parse_as_serde_json_parses_them() {
        for text in [
            r#"{"a": [1, -2, 3.5, 1e308, 5e-324, -0.0, 18446744073709551615], "b": {"c": null, "d": true}}"#,
            r#""\u00e9\ud83d\ude00""#,
            "[]",
            "{}",
            r#"{"dup": 1, "dup": 2}"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn nul_in_a_string_or_a_key_is_refused_with_its_pointer() {
        assert_eq!(invalid(r#"{"a": ["x", "y\u0000"]}"#).0, "/a/1");
        assert_eq!(invalid(r#"{"a/b": {"k\u0000": 1}}"#).0, "/a~1b/k\u{0}");
        assert_eq!(invalid(r#""\u0000""#).0, "");
        assert!(invalid(r#"{"a": "\u0000"}"#).1.contains("U+0000"));
    }

    #[test]
    fn an_overflowing_literal_is_a_broken_rule_at_its_place() {
        // The wording serde_json uses for it, which `classify` relies on.
        let e = serde_json::from_str::<Value>("1e400").unwrap_err();
        assert!(e.to_string().starts_with("number out of range"), "{e}");
        assert_eq!(
            invalid(r#"{"treatments": [{"weight": 1}, {"weight": 1e400}]}"#).0,
            "/treatments/1/weight"
        );
        assert_eq!(invalid(r#"[-1e400]"#).0, "/0");
        let long_integer = format!("[{}]", "9".repeat(400));
        assert_eq!(invalid(&long_integer).0, "/0");
    }

    #[test]
    fn nesting_is_bounded_and_named() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_BODY_DEPTH),
            "]".repeat(MAX_BODY_DEPTH)
        );
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_BODY_DEPTH + 1),
            "]".repeat(MAX_BODY_DEPTH + 1)
        );
        let (path, message) = invalid(&deep);
        assert_eq!(path, format!("{}", "/0".repeat(MAX_BODY_DEPTH)));
        assert!(message.contains("64"), "{message}");
        // Far deeper than serde_json's own recursion limit: still ours, not a 400.
        let abyss = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(
            parse(abyss.as_bytes()),
            Err(BodyError::Invalid { .. })
        ));
    }

    #[test]
    fn text_that_is_not_json_is_a_syntax_error() {
        for text in ["", "{", "{\"a\": 1} x", "nul", "[1,]", "\"\\ud800\""] {
            assert!(
                matches!(parse(text.as_bytes()), Err(BodyError::Syntax(_))),
                "{text}"
            );
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever serde_json accepts, this parser gives the same value or
        /// refuses it for a NUL; it never panics on any bytes.
        #[test]
        fn agrees_with_serde_json_except_for_nul(value in json_value()) {
            let text = serde_json::to_string(&value).unwrap();
            match parse(text.as_bytes()) {
                Ok(parsed) => prop_assert_eq!(parsed, serde_json::from_str::<Value>(&text).unwrap()),
                Err(BodyError::Invalid { message, .. }) => {
                    prop_assert!(text.contains("\\u0000"));
                    prop_assert_eq!(message, NUL);
                }
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
