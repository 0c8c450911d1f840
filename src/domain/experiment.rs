//! Experiments (§3) and the assignment decision (§4.3).
//!
//! [`ExperimentConfig::parse`] validates a document into its normalised form
//! (every default filled in), which is what is stored, versioned and served.
//! [`Experiment`] pairs a config with its layout and answers the pure parts of
//! a decision; the engine adds the flag lookup and sticky storage around them.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::fields::{boolean, optional_text, reject_unknown, reject_unknown_at, SERVED};
use super::hash::bucket;
use super::ids::{Key, OrgId, UnitId};
use super::layout::{Layout, Range, Weighted};
use super::problem::{pointer, Problem};
use super::routing::{self, CohortDef, CompiledRouting, RoutingConfig, VariableDef};

/// At most this many treatments per experiment.
pub const MAX_TREATMENTS: usize = 100;

/// At most this many forced pins per experiment.
pub const MAX_FORCED: usize = 1000;

/// Served with an experiment besides [`SERVED`]: ignored on write.
const LAYOUT: &str = "layout";

/// `running` answers assignments; `paused` answers `treatment: null` (reason `experiment_paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    Running,
    Paused,
}

/// What one unit is randomized by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashBy {
    /// Every unit on its own: `bucket(salt, org_id, unit_id)`.
    Unit,
    /// Every unit of an org together: `bucket(salt, org_id)`.
    Org,
}

/// A treatment as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Treatment {
    pub name: Key,
    #[serde(serialize_with = "super::number::compact")]
    pub weight: f64,
    pub payload: Value,
}

/// An experiment document as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExperimentConfig {
    pub description: String,
    pub status: ExperimentStatus,
    #[schema(required = true)]
    pub eligibility_flag: Option<Key>,
    pub salt: String,
    #[serde(serialize_with = "super::number::compact")]
    pub coverage: f64,
    pub sticky: bool,
    pub hash_by: HashBy,
    pub treatments: Vec<Treatment>,
    pub cohorts: Vec<CohortDef>,
    pub variables: Vec<VariableDef>,
    #[schema(required = true)]
    pub routing: Option<RoutingConfig>,
    /// Record this experiment's exposures (§8).
    pub exposures: bool,
    /// QA pins (§3): answered before eligibility and bucket, never exposures.
    pub forced: Vec<ForcedPin>,
}

/// A QA pin: this org's unit, or with `unit_id: null` every unit of the
/// org, gets `treatment` (listed, its weight may be 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"org_id": "42", "unit_id": "pr-1234", "treatment": "perf"}))]
pub struct ForcedPin {
    pub org_id: String,
    #[schema(required = true)]
    pub unit_id: Option<String>,
    pub treatment: String,
}

/// Why an assignment answered as it did (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentReason {
    Assigned,
    Sticky,
    Forced,
    ExperimentPaused,
    OrgNotEligible,
    NoActiveTreatments,
    NotInCoverage,
}

impl AssignmentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentReason::Assigned => "assigned",
            AssignmentReason::Sticky => "sticky",
            AssignmentReason::Forced => "forced",
            AssignmentReason::ExperimentPaused => "experiment_paused",
            AssignmentReason::OrgNotEligible => "org_not_eligible",
            AssignmentReason::NoActiveTreatments => "no_active_treatments",
            AssignmentReason::NotInCoverage => "not_in_coverage",
        }
    }
}

impl ExperimentConfig {
    /// Validates a document, collecting every problem. `key` supplies the
    /// default salt.
    pub fn parse(key: &Key, doc: &Value) -> Result<Self, Vec<Problem>> {
        let Some(map) = doc.as_object() else {
            return Err(vec![Problem::new("", "must be a JSON object")]);
        };
        let mut problems = Vec::new();
        let known: Vec<&str> = [
            "description",
            "status",
            "eligibility_flag",
            "salt",
            "coverage",
            "sticky",
            "hash_by",
            "treatments",
            "cohorts",
            "variables",
            "routing",
            "exposures",
            "forced",
        ]
        .into_iter()
        .chain(SERVED.iter().copied())
        .chain([LAYOUT])
        .collect();
        reject_unknown(map, &known, &mut problems);

        let description = optional_text(map, "description", &mut problems);
        let status = match map.get("status").and_then(Value::as_str) {
            None if matches!(map.get("status"), None | Some(Value::Null)) => {
                ExperimentStatus::Running
            }
            Some("running") => ExperimentStatus::Running,
            Some("paused") => ExperimentStatus::Paused,
            _ => {
                problems.push(Problem::new("/status", "must be \"running\" or \"paused\""));
                ExperimentStatus::Running
            }
        };
        let eligibility_flag = match map.get("eligibility_flag") {
            None | Some(Value::Null) => None,
            Some(v) => match Key::from_json(v) {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push(Problem::new("/eligibility_flag", e));
                    None
                }
            },
        };
        let salt = match map.get("salt") {
            None | Some(Value::Null) => key.as_str().to_owned(),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => s.clone(),
            Some(_) => {
                problems.push(Problem::new("/salt", "must be a string of 1 to 200 bytes"));
                String::new()
            }
        };
        let coverage = match map.get("coverage") {
            None | Some(Value::Null) => 1.0,
            Some(v) => match v.as_f64() {
                Some(c) if (0.0..=1.0).contains(&c) => c,
                _ => {
                    problems.push(Problem::new("/coverage", "must be a number from 0 to 1"));
                    1.0
                }
            },
        };
        let sticky = boolean(map, "sticky", "", false, &mut problems);
        let hash_by = match map.get("hash_by").and_then(Value::as_str) {
            None if matches!(map.get("hash_by"), None | Some(Value::Null)) => HashBy::Unit,
            Some("unit") => HashBy::Unit,
            Some("org") => HashBy::Org,
            _ => {
                problems.push(Problem::new("/hash_by", "must be \"unit\" or \"org\""));
                HashBy::Unit
            }
        };
        let treatments = parse_treatments(map.get("treatments"), &mut problems);
        let cohorts = routing::parse_cohorts(map.get("cohorts"), &mut problems);
        let variables = routing::parse_variables(map.get("variables"), &cohorts, &mut problems);
        let routing = routing::parse_routing(map.get("routing"), &cohorts, &mut problems);
        let exposures = boolean(map, "exposures", "", true, &mut problems);
        let forced = parse_forced(map.get("forced"), &treatments, &mut problems);
        if problems.is_empty() {
            Ok(Self {
                description,
                status,
                eligibility_flag,
                salt,
                coverage,
                sticky,
                hash_by,
                treatments,
                cohorts,
                variables,
                routing,
                exposures,
                forced,
            })
        } else {
            Err(problems)
        }
    }

    /// Do two configs need different layouts? Only treatments (names and
    /// weights, in order) and coverage shape a layout.
    pub fn same_layout_inputs(&self, other: &Self) -> bool {
        self.coverage == other.coverage
            && self.treatments.len() == other.treatments.len()
            && self
                .treatments
                .iter()
                .zip(&other.treatments)
                .all(|(a, b)| a.name == b.name && a.weight == b.weight)
    }

    pub fn treatment_names(&self) -> Vec<&str> {
        self.treatments.iter().map(|t| t.name.as_str()).collect()
    }

    /// The layout of this config, grown from the previous version's ranges.
    pub fn layout_from(&self, previous: &[Range]) -> Layout {
        let weighted: Vec<Weighted<'_>> = self
            .treatments
            .iter()
            .map(|t| Weighted {
                name: t.name.as_str(),
                weight: t.weight,
            })
            .collect();
        Layout::rebalance(previous, &weighted, self.coverage)
    }
}

/// `forced`: at most [`MAX_FORCED`] pins, each naming a listed treatment,
/// no two for the same org and unit.
fn parse_forced(
    value: Option<&Value>,
    treatments: &[Treatment],
    problems: &mut Vec<Problem>,
) -> Vec<ForcedPin> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(Problem::new("/forced", "must be an array of pins"));
            return Vec::new();
        }
    };
    if items.len() > MAX_FORCED {
        problems.push(Problem::new(
            "/forced",
            format!("at most {MAX_FORCED} pins"),
        ));
        return Vec::new();
    }
    let mut pins: Vec<ForcedPin> = Vec::with_capacity(items.len());
    let mut seen: HashMap<(String, Option<String>), usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = pointer("/forced", i);
        let Some(pin) = item.as_object() else {
            problems.push(Problem::new(
                at,
                "must be an object like {\"org_id\": 42, \"unit_id\": null, \"treatment\": \"control\"}",
            ));
            continue;
        };
        reject_unknown_at(pin, &["org_id", "unit_id", "treatment"], &at, problems);
        let org_id = match pin.get("org_id") {
            None | Some(Value::Null) => {
                problems.push(Problem::new(pointer(&at, "org_id"), "is required"));
                None
            }
            Some(v) => OrgId::from_json(v)
                .map_err(|e| problems.push(Problem::new(pointer(&at, "org_id"), e)))
                .ok(),
        };
        let unit_id = match pin.get("unit_id") {
            None | Some(Value::Null) => Some(None),
            Some(v) => UnitId::from_json(v)
                .map(|u| Some(u.into_string()))
                .map_err(|e| problems.push(Problem::new(pointer(&at, "unit_id"), e)))
                .ok(),
        };
        let treatment = match pin.get("treatment").and_then(Value::as_str) {
            Some(name) if treatments.iter().any(|t| t.name.as_str() == name) => {
                Some(name.to_owned())
            }
            _ => {
                problems.push(Problem::new(
                    pointer(&at, "treatment"),
                    "must name a listed treatment",
                ));
                None
            }
        };
        let (Some(org_id), Some(unit_id), Some(treatment)) = (org_id, unit_id, treatment) else {
            continue;
        };
        let org_id = org_id.into_string();
        if let Some(first) = seen.insert((org_id.clone(), unit_id.clone()), i) {
            problems.push(Problem::new(
                at,
                format!("pins the same org and unit as /forced/{first}"),
            ));
            continue;
        }
        pins.push(ForcedPin {
            org_id,
            unit_id,
            treatment,
        });
    }
    pins
}

fn parse_treatments(value: Option<&Value>, problems: &mut Vec<Problem>) -> Vec<Treatment> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(Problem::new(
                "/treatments",
                "must be an array of treatments",
            ));
            return Vec::new();
        }
    };
    if items.len() > MAX_TREATMENTS {
        problems.push(Problem::new(
            "/treatments",
            format!("at most {MAX_TREATMENTS} treatments"),
        ));
        return Vec::new();
    }
    let mut out: Vec<Treatment> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = pointer("/treatments", i);
        let Some(t) = item.as_object() else {
            problems.push(Problem::new(
                at,
                "must be an object like {\"name\": \"control\", \"weight\": 1}",
            ));
            continue;
        };
        reject_unknown_at(t, &["name", "weight", "payload"], &at, problems);
        let name = match t.get("name").map(Key::from_json) {
            Some(Ok(name)) => {
                if out.iter().any(|o| o.name == name) {
                    problems.push(Problem::new(
                        pointer(&at, "name"),
                        format!("duplicate treatment name {name:?}"),
                    ));
                }
                Some(name)
            }
            Some(Err(e)) => {
                problems.push(Problem::new(pointer(&at, "name"), e));
                None
            }
            None => {
                problems.push(Problem::new(pointer(&at, "name"), "is required"));
                None
            }
        };
        let weight = match t.get("weight").and_then(Value::as_f64) {
            Some(w) if w.is_finite() && w >= 0.0 => Some(w),
            _ => {
                problems.push(Problem::new(
                    pointer(&at, "weight"),
                    "must be a finite number >= 0",
                ));
                None
            }
        };
        if let (Some(name), Some(weight)) = (name, weight) {
            out.push(Treatment {
                name,
                weight,
                payload: t.get("payload").cloned().unwrap_or(Value::Null),
            });
        }
    }
    // No check of the weights' sum: weights are relative, and §4.2 rescales
    // weights whose sum overflows, so any finite weights ≥ 0 are a layout.
    out
}

/// A config ready to decide, with its layout.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub config: ExperimentConfig,
    pub layout: Layout,
    /// The routing config with its conditions compiled.
    pub routing: Option<CompiledRouting>,
    /// Whether any treatment has weight > 0.
    has_active: bool,
    /// The forced pins by org: the pin for every unit, and per unit.
    forced: HashMap<String, OrgPins>,
}

/// One org's forced pins, as treatment indexes.
#[derive(Debug, Clone, Default)]
struct OrgPins {
    every_unit: Option<usize>,
    units: HashMap<String, usize>,
}

/// The outcome of the steps of §4.3 that need no storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Steps 1–3 decided: not in the experiment, for this reason.
    Out(AssignmentReason),
    /// Step 1a: a forced pin gives this treatment (by index).
    Forced(usize),
    /// Go on to the sticky lookup (if sticky) and the bucket.
    Continue,
}

impl Experiment {
    pub fn new(config: ExperimentConfig, layout: Layout) -> Self {
        let has_active = config.treatments.iter().any(|t| t.weight > 0.0);
        let routing = config.routing.clone().map(CompiledRouting::new);
        let mut forced: HashMap<String, OrgPins> = HashMap::new();
        for pin in &config.forced {
            let Some(i) = config
                .treatments
                .iter()
                .position(|t| t.name.as_str() == pin.treatment)
            else {
                continue;
            };
            let org = forced.entry(pin.org_id.clone()).or_default();
            match &pin.unit_id {
                Some(unit) => {
                    org.units.insert(unit.clone(), i);
                }
                None => org.every_unit = Some(i),
            }
        }
        Self {
            config,
            layout,
            routing,
            has_active,
            forced,
        }
    }

    /// Rebuilds an experiment from its stored layout ranges, checking them:
    /// every range inside 0..10000, no overlap, only listed treatments, and
    /// every treatment holding exactly its §4.2 target (a layout edited by
    /// hand would otherwise hand units to a disabled or unlisted arm).
    pub fn from_stored(config: ExperimentConfig, ranges: &[Range]) -> Result<Self, String> {
        let layout = Layout::from_ranges(ranges, &config.treatment_names())?;
        let weights: Vec<f64> = config.treatments.iter().map(|t| t.weight).collect();
        let want = super::layout::targets(&weights, config.coverage);
        let mut have = layout.counts_by_index();
        have.resize(want.len(), 0);
        if let Some((i, (h, w))) = have
            .iter()
            .zip(&want)
            .enumerate()
            .find(|(_, (h, w))| h != w)
        {
            return Err(format!(
                "layout gives treatment {:?} {h} buckets, but its weight and the coverage call for {w}",
                config.treatments[i].name.as_str()
            ));
        }
        Ok(Self::new(config, layout))
    }

    pub fn ranges(&self) -> Vec<Range> {
        self.layout.ranges(&self.config.treatment_names())
    }

    /// Steps 1–3 of §4.3, with 1a (forced pins). `eligible` is only called
    /// when the experiment is gated by a flag.
    pub fn precheck(
        &self,
        org_id: &str,
        unit_id: &str,
        eligible: impl FnOnce(&Key) -> bool,
    ) -> Precheck {
        if self.config.status == ExperimentStatus::Paused {
            return Precheck::Out(AssignmentReason::ExperimentPaused);
        }
        if let Some(pins) = self.forced.get(org_id) {
            if let Some(&i) = pins.units.get(unit_id).or(pins.every_unit.as_ref()) {
                return Precheck::Forced(i);
            }
        }
        if let Some(flag) = &self.config.eligibility_flag {
            if !eligible(flag) {
                return Precheck::Out(AssignmentReason::OrgNotEligible);
            }
        }
        if !self.has_active {
            return Precheck::Out(AssignmentReason::NoActiveTreatments);
        }
        Precheck::Continue
    }

    /// The index of an active treatment called `name` (step 4: a stored
    /// sticky assignment counts only while its treatment has weight > 0).
    pub fn active_treatment(&self, name: &str) -> Option<usize> {
        self.config
            .treatments
            .iter()
            .position(|t| t.name.as_str() == name && t.weight > 0.0)
    }

    /// The unit's bucket (§4.1).
    #[inline]
    pub fn bucket(&self, org_id: &str, unit_id: &str) -> u16 {
        match self.config.hash_by {
            HashBy::Unit => bucket(&[&self.config.salt, org_id, unit_id]),
            HashBy::Org => bucket(&[&self.config.salt, org_id]),
        }
    }

    /// Step 5: the treatment index the layout gives the bucket, if any.
    #[inline]
    pub fn treatment_at(&self, bucket: u16) -> Option<usize> {
        self.layout.treatment_at(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> Key {
        Key::parse("code-review").unwrap()
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = ExperimentConfig::parse(&key(), &json!({})).unwrap();
        assert_eq!(c.salt, "code-review");
        assert_eq!(c.coverage, 1.0);
        assert_eq!(c.status, ExperimentStatus::Running);
        assert_eq!(c.hash_by, HashBy::Unit);
        assert!(!c.sticky && c.treatments.is_empty());
    }

    #[test]
    fn list_shaped_treatments_are_refused_pointing_at_the_entry() {
        for doc in [
            json!({"treatments": [["exp1"]]}),
            json!({"treatments": [["exp1", "not-a-number"]]}),
        ] {
            let problems = ExperimentConfig::parse(&key(), &doc).unwrap_err();
            assert_eq!(problems.len(), 1);
            assert_eq!(problems[0].path, "/treatments/0");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let problems = ExperimentConfig::parse(
            &key(),
            &json!({"status": "on", "coverage": 2, "sticky": 1, "hash_by": "team", "salt": "",
                    "eligibility_flag": "bad key", "wat": 1,
                    "treatments": [{"name": "a", "weight": -1}, {"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}),
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/wat",
                "/status",
                "/eligibility_flag",
                "/salt",
                "/coverage",
                "/sticky",
                "/hash_by",
                "/treatments/0/weight",
                "/treatments/2/name"
            ]
        );
    }

    /// Contract §1: any finite weights ≥ 0 give a correct layout, however
    /// large their sum (§4.2's overflow rule rescales them).
    #[test]
    fn weights_whose_sum_overflows_are_accepted_and_split_as_the_contract_says() {
        let split = |weights: [f64; 2]| {
            let doc = json!({"treatments": [{"name": "a", "weight": weights[0]}, {"name": "b", "weight": weights[1]}]});
            let config = ExperimentConfig::parse(&key(), &doc).unwrap();
            let mut counts = config.layout_from(&[]).counts_by_index();
            counts.resize(2, 0);
            counts
        };
        assert_eq!(split([1e308, 1e308]), vec![5000, 5000]);
        assert_eq!(split([f64::MAX, f64::MAX]), vec![5000, 5000]);
        assert_eq!(split([1e308, 5e-324]), vec![10_000, 0]);
        assert_eq!(split([1e305, 0.0]), vec![10_000, 0]);
    }
}
