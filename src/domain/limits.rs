//! The bounds of §1 ("Bounded work"): every request finishes in time
//! bounded by these, whatever its content.
//!
//! Each limit is checked where the value enters (the request body, a stored
//! document being validated) and answered with 422 naming the limit, so the
//! rules that evaluate the value later never meet anything larger.

use serde_json::Value;

/// `attributes` (of an evaluation, an assignment or a participant): at most
/// this many bytes of JSON, as serialised compactly.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// `attributes`: at most this many levels of nesting (`{}` is one level).
pub const MAX_ATTRIBUTES_DEPTH: usize = 32;
/// One condition (a flag rule's or a composition entry's): at most this many
/// bytes of JSON.
pub const MAX_CONDITION_BYTES: usize = 64 * 1024;
/// `$in`, `$nin`, `$ini`, `$nini`, `$all`, `$alli`: at most this many entries.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// One `$regex`/`$regexi` pattern: at most this many bytes for each of the
/// automata it compiles to.
pub const MAX_PATTERN_BYTES: usize = 1 << 20;
/// All the patterns of one condition together: at most this many bytes of
/// compiled regular expressions (a pattern's length says little about its
/// compiled size: the 7 bytes `\w{20}` take a megabyte).
pub const MAX_CONDITION_PATTERN_BYTES: usize = 4 << 20;
/// The conditions of one document (a flag's rules; an experiment's routing
/// compositions), together: at most this much work per evaluation against
/// the largest allowed attributes, in item visits (see
/// `Condition::cost`). About 50 ms on a slow core at worst; ordinary
/// conditions cost a few to a few thousand.
pub const MAX_EVALUATION_COST: u64 = 2_000_000;
/// Any request body: at most this many levels of nesting. Deeper documents
/// are refused while they are parsed, before anything recurses over them.
pub const MAX_BODY_DEPTH: usize = 64;
/// Durations (`*_seconds` fields): whole seconds from 1 to one year.
pub const MAX_DURATION_SECONDS: u64 = 31_536_000;

/// The length of `value` serialised as compact JSON, without building the text.
pub fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Levels of nesting: a scalar is 0, `{}` and `[]` are 1, `{"a": []}` is 2.
pub fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks an `attributes` value against its size and depth limits; the error
/// names the limit that was passed.
pub fn check_attributes(value: &Value) -> Result<(), String> {
    let depth = json_depth(value);
    if depth > MAX_ATTRIBUTES_DEPTH {
        return Err(format!(
            "is nested {depth} levels deep; the limit is {MAX_ATTRIBUTES_DEPTH}"
        ));
    }
    let size = json_size(value);
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(format!(
            "is {size} bytes of JSON; the limit is {MAX_ATTRIBUTES_BYTES}"
        ));
    }
    Ok(())
}

/// Parses a duration field: a whole number of seconds from 1 to one year
/// (`600` and `600.0` alike; `1.5`, `0`, `-1` and anything larger are refused).
pub fn duration_seconds(value: &Value) -> Result<u64, String> {
    whole_number(value, 1, MAX_DURATION_SECONDS).ok_or_else(|| {
        format!("must be a whole number of seconds from 1 to {MAX_DURATION_SECONDS}")
    })
}

/// A JSON number that is a whole number from `min` to `max`: `5` and `5.0`
/// alike (a client's JSON library may write either); fractions, numbers out
/// of range and anything that is not a number are `None`.
pub fn whole_number(value: &Value, min: u64, max: u64) -> Option<u64> {
    let Value::Number(n) = value else {
        return None;
    };
    let whole = match (n.as_u64(), n.as_f64()) {
        (Some(w), _) => w,
        // A whole f64 in [0, 2^64) converts exactly; outside it `as u64`
        // would saturate (1e300 into u64::MAX, -1 into 0) instead of failing.
        (None, Some(f)) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            f as u64
        }
        _ => return None,
    };
    (min..=max).contains(&whole).then_some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_is_the_compact_serialisation() {
        let v = json!({"a": [1, "x"], "b": null});
        assert_eq!(json_size(&v), serde_json::to_string(&v).unwrap().len());
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [{"b": 1}]})), 3);
    }

    #[test]
    fn attributes_over_a_limit_name_it() {
        let mut deep = json!(1);
        for _ in 0..MAX_ATTRIBUTES_DEPTH {
            deep = json!({ "a": deep });
        }
        assert!(check_attributes(&deep).is_ok());
        let deeper = json!({ "a": deep });
        assert!(check_attributes(&deeper).unwrap_err().contains("32"));
        let big = json!({"a": "x".repeat(MAX_ATTRIBUTES_BYTES)});
        assert!(check_attributes(&big).unwrap_err().contains("16384"));
    }

    #[test]
    fn whole_numbers_accept_integral_floats_and_refuse_everything_else() {
        let max = u64::from(u32::MAX);
        assert_eq!(whole_number(&json!(5), 1, max), Some(5));
        assert_eq!(whole_number(&json!(5.0), 1, max), Some(5));
        assert_eq!(whole_number(&json!(u32::MAX), 1, max), Some(max));
        assert_eq!(whole_number(&json!(4_294_967_295.0), 1, max), Some(max));
        for bad in [
            json!(0),
            json!(-0.0),
            json!(-1),
            json!(2.5),
            json!(u64::from(u32::MAX) + 1),
            json!(4_294_967_296.0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(5e-324),
            json!("5"),
            json!(true),
            json!(null),
        ] {
            assert_eq!(whole_number(&bad, 1, max), None, "{bad} should be refused");
        }
        assert_eq!(whole_number(&json!(u64::MAX), 0, u64::MAX), Some(u64::MAX));
        // 2^64 as f64 is above every u64, though `u64::MAX as f64` rounds to it.
        assert_eq!(
            whole_number(&json!(18_446_744_073_709_551_616.0), 0, u64::MAX),
            None
        );
    }

    #[test]
    fn durations_are_whole_seconds_up_to_a_year() {
        assert_eq!(duration_seconds(&json!(1)), Ok(1));
        assert_eq!(duration_seconds(&json!(600.0)), Ok(600));
        assert_eq!(duration_seconds(&json!(31_536_000)), Ok(31_536_000));
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(31_536_001),
            json!(1_000_000_000_000u64),
            json!(u64::MAX),
            json!(1e300),
            json!(5e-324),
            json!("600"),
            json!(null),
        ] {
            assert!(duration_seconds(&bad).is_err(), "{bad} should be refused");
        }
    }
}
