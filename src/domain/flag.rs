//! Eligibility flags (§2): rules, rollout, overrides → decision + reason.

use serde::Serialize;
use serde_json::Value;

use super::condition::{self, Condition};
use super::fields::{boolean, optional_text, reject_unknown, reject_unknown_at, SERVED};
use super::hash::bucket;
use super::problem::{pointer, Problem};

/// A flag document as stored and served (normalised: every default filled in).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FlagConfig {
    pub description: String,
    pub enabled: bool,
    pub rules: Vec<RuleConfig>,
}

/// A targeting rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleConfig {
    #[schema(required = true)]
    pub name: Option<String>,
    /// Absent when the rule matches everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::domain::condition::stored_schema)]
    pub condition: Option<Value>,
    #[serde(serialize_with = "super::number::compact")]
    pub rollout: f64,
}

/// Why a flag evaluated as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagReason {
    Override,
    Rule,
    Default,
    FlagDisabled,
}

/// The outcome of evaluating a flag for one org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDecision<'a> {
    pub enabled: bool,
    pub reason: FlagReason,
    pub rule: Option<&'a str>,
}

/// A flag ready to evaluate: conditions compiled, rollouts as bucket thresholds.
#[derive(Debug, Clone)]
pub struct CompiledFlag {
    pub config: FlagConfig,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: Option<String>,
    condition: Condition,
    /// `round(rollout × 100)`: the org is in when its bucket is below this.
    threshold: u16,
}

impl FlagConfig {
    /// Validates a request body (or a stored document) into a config,
    /// collecting every problem.
    pub fn parse(doc: &Value) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let Some(map) = doc.as_object() else {
            return Err(vec![Problem::new("", "must be a JSON object")]);
        };
        let known: Vec<&str> = ["description", "enabled", "rules"]
            .into_iter()
            .chain(SERVED.iter().copied())
            .collect();
        reject_unknown(map, &known, &mut problems);
        let description = optional_text(map, "description", &mut problems);
        let enabled = boolean(map, "enabled", "", true, &mut problems);
        let mut rules = Vec::new();
        match map.get("rules") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = parse_rule(item, &pointer("/rules", i), &mut problems) {
                        rules.push(rule);
                    }
                }
            }
            Some(_) => problems.push(Problem::new("/rules", "must be an array of rules")),
        }
        if problems.is_empty() {
            // An evaluation may try every rule: their work is bounded together.
            let cost = total_cost(rules.iter().filter_map(|r| r.condition.as_ref()));
            if let Err(problem) = condition::check_cost(&cost, "/rules") {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(Self {
                description,
                enabled,
                rules,
            })
        } else {
            Err(problems)
        }
    }

    pub fn compile(self) -> CompiledFlag {
        let rules = self
            .rules
            .iter()
            .map(|r| CompiledRule {
                name: r.name.clone(),
                condition: r
                    .condition
                    .as_ref()
                    .map_or_else(Condition::always, Condition::compile),
                threshold: (r.rollout * 100.0).round() as u16,
            })
            .collect();
        CompiledFlag {
            config: self,
            rules,
        }
    }
}

fn parse_rule(item: &Value, at: &str, problems: &mut Vec<Problem>) -> Option<RuleConfig> {
    let Some(map) = item.as_object() else {
        problems.push(Problem::new(
            at,
            "must be an object with an optional name and condition and a rollout",
        ));
        return None;
    };
    let before = problems.len();
    reject_unknown_at(map, &["name", "condition", "rollout"], at, problems);
    let name = match map.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
        Some(_) => {
            problems.push(Problem::new(
                pointer(at, "name"),
                "must be a string of 1 to 200 bytes",
            ));
            None
        }
    };
    let condition = match map.get("condition") {
        None | Some(Value::Null) => None,
        Some(c) => {
            problems.extend(condition::validate(c, &pointer(at, "condition")));
            Some(c.clone())
        }
    };
    let rollout = match map.get("rollout").and_then(Value::as_f64) {
        Some(r) if (0.0..=100.0).contains(&r) && ((r * 100.0).round() - r * 100.0).abs() < 1e-6 => {
            hundredths(r)
        }
        _ => {
            problems.push(Problem::new(
                pointer(at, "rollout"),
                "must be a percentage from 0 to 100 with at most two decimals",
            ));
            0.0
        }
    };
    (problems.len() == before).then_some(RuleConfig {
        name,
        condition,
        rollout,
    })
}

/// A rollout as the nearest number with at most two decimals.
///
/// Validation tolerates a rounding error (`0.1 + 0.2` arrives as
/// `0.30000000000000004`), and what is stored and served must then be what
/// the rule means: 0.3, not the noise; `5e-324` or `1e-9` is 0, and `-0` is
/// 0 without its sign. Dividing the whole number of hundredths by 100 gives
/// exactly the f64 that the two-decimal literal parses to.
fn hundredths(rollout: f64) -> f64 {
    (rollout * 100.0).round() / 100.0 + 0.0
}

/// The work of evaluating every one of `conditions` once (see
/// [`Condition::cost`]).
pub(crate) fn total_cost<'a>(conditions: impl Iterator<Item = &'a Value>) -> u64 {
    conditions.fold(0u64, |sum, c| {
        sum.saturating_add(Condition::compile(c).cost())
    })
}

impl CompiledFlag {
    /// Evaluates the flag for `org_id` (§2): disabled, then the org's
    /// override, then the first matching rule's rollout, else off.
    ///
    /// `attributes` must already hold `org_id` as a string.
    pub fn evaluate(
        &self,
        key: &str,
        org_id: &str,
        override_: Option<bool>,
        attributes: &Value,
    ) -> FlagDecision<'_> {
        if !self.config.enabled {
            return FlagDecision {
                enabled: false,
                reason: FlagReason::FlagDisabled,
                rule: None,
            };
        }
        if let Some(enabled) = override_ {
            return FlagDecision {
                enabled,
                reason: FlagReason::Override,
                rule: None,
            };
        }
        for rule in &self.rules {
            if rule.condition.matches(attributes) {
                return FlagDecision {
                    enabled: bucket(&[key, org_id]) < rule.threshold,
                    reason: FlagReason::Rule,
                    rule: rule.name.as_deref(),
                };
            }
        }
        FlagDecision {
            enabled: false,
            reason: FlagReason::Default,
            rule: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(doc: Value) -> CompiledFlag {
        FlagConfig::parse(&doc).unwrap().compile()
    }

    #[test]
    fn evaluation_follows_the_documented_order() {
        let f = flag(json!({"rules": [
            {"name": "biz", "condition": {"plan": "business"}, "rollout": 100},
            {"name": "none", "rollout": 0}]}));
        let attrs = json!({"plan": "business", "org_id": "1"});
        assert_eq!(
            f.evaluate("k", "1", None, &attrs),
            FlagDecision {
                enabled: true,
                reason: FlagReason::Rule,
                rule: Some("biz")
            }
        );
        assert_eq!(
            f.evaluate("k", "1", Some(false), &attrs).reason,
            FlagReason::Override
        );
        let other = json!({"plan": "free", "org_id": "1"});
        assert_eq!(
            f.evaluate("k", "1", None, &other),
            FlagDecision {
                enabled: false,
                reason: FlagReason::Rule,
                rule: Some("none")
            }
        );
        let off = flag(json!({"enabled": false, "rules": [{"rollout": 100}]}));
        assert_eq!(
            off.evaluate("k", "1", Some(true), &attrs).reason,
            FlagReason::FlagDisabled
        );
        assert_eq!(
            flag(json!({})).evaluate("k", "1", None, &attrs).reason,
            FlagReason::Default
        );
    }

    #[test]
    fn rollout_compares_the_org_bucket_with_hundredths_of_a_percent() {
        let f = flag(json!({"rules": [{"rollout": 12.34}]}));
        for org in 0..500 {
            let org = org.to_string();
            let attrs = json!({"org_id": org});
            assert_eq!(
                f.evaluate("k", &org, None, &attrs).enabled,
                bucket(&["k", &org]) < 1234
            );
        }
    }

    #[test]
    fn rollouts_are_kept_as_hundredths_of_a_percent() {
        let stored = |r: Value| {
            FlagConfig::parse(&json!({"rules": [{"rollout": r}]})).map(|c| c.rules[0].rollout)
        };
        for (given, want) in [
            (json!(100.0), 100.0),
            (json!(100), 100.0),
            (json!(12.34), 12.34),
            (json!(0.30000000000000004), 0.3),
            (json!(12.340000000001), 12.34),
            (json!(5e-324), 0.0),
            (json!(1e-320), 0.0),
            (json!(f64::MIN_POSITIVE), 0.0),
            (json!(1e-9), 0.0),
        ] {
            assert_eq!(stored(given.clone()), Ok(want), "{given}");
        }
        let zero = stored(json!(-0.0)).unwrap();
        assert!(zero == 0.0 && zero.is_sign_positive());
        for bad in [
            json!(100.004),
            json!(12.345),
            json!(-0.01),
            json!(1e-5),
            json!(1e300),
        ] {
            assert!(stored(bad.clone()).is_err(), "{bad}");
        }
        // The served document says what the threshold does.
        let f = FlagConfig::parse(&json!({"rules": [{"rollout": 0.30000000000000004}]})).unwrap();
        assert_eq!(
            serde_json::to_value(&f).unwrap()["rules"][0]["rollout"],
            json!(0.3)
        );
        assert_eq!(f.compile().rules[0].threshold, 30);
    }

    #[test]
    fn bad_rules_are_reported_each_with_its_pointer() {
        let problems = FlagConfig::parse(&json!({"enabled": "yes", "rules": [
            {"rollout": 100.001}, {"rollout": -1}, {"condition": "x", "rollout": 5}, 7, {"rollout": 5, "extra": 1}]}))
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/enabled",
                "/rules/0/rollout",
                "/rules/1/rollout",
                "/rules/2/condition",
                "/rules/3",
                "/rules/4/extra"
            ]
        );
    }
}
