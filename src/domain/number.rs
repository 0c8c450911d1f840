//! Numbers in served documents: a whole number is written as an integer
//! (`"weight": 1`, not `1.0`), so documents read back as they were written.

use serde::Serializer;

/// Serialises an `f64`, as an integer when it is one.
pub fn compact<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    // Below 2^53 every integer-valued f64 converts to i64 exactly.
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct N(#[serde(serialize_with = "super::compact")] f64);

    #[test]
    fn whole_numbers_are_integers_and_fractions_stay() {
        assert_eq!(serde_json::to_string(&N(1.0)).unwrap(), "1");
        assert_eq!(serde_json::to_string(&N(0.0)).unwrap(), "0");
        assert_eq!(serde_json::to_string(&N(12.5)).unwrap(), "12.5");
        assert_eq!(serde_json::to_string(&N(1e300)).unwrap(), "1e+300");
    }
}
