//! Rules as data: the TOML rule format, the built-in set, and extend-or-override by id.

use std::collections::HashMap;

use serde::Deserialize;

/// The built-in rule file, compiled into the crate.
pub const BUILTIN_RULES_TOML: &str = include_str!("../rules/builtin.toml");

/// One rule as written in a rule file (`[[rules]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable rule id; a rule file entry with a built-in's id replaces that built-in.
    pub id: String,
    /// Stable data-class id reported in findings, e.g. `pii.email`.
    pub class: String,
    /// Rust `regex` syntax. If it has a capture group 1, the finding is that group.
    #[serde(default)]
    pub regex: Option<String>,
    /// Literal anchors (case-sensitive); the regex runs only around a hit. On a key rule, the
    /// key must contain one of them.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Check applied to a regex match before it becomes a finding.
    #[serde(default)]
    pub validator: Validator,
    /// Minimum Shannon entropy, in bits per byte, of the finding.
    #[serde(default)]
    pub entropy_min: Option<f64>,
    /// The rule applies only to values of keys whose words contain one of these.
    #[serde(default)]
    pub key_context: Vec<String>,
    /// A native detector used instead of a regex.
    #[serde(default)]
    pub detector: Option<NativeDetector>,
    /// `false` removes the rule (e.g. to switch a built-in off).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A check applied to a candidate before it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// No check beyond the regex.
    #[default]
    None,
    /// Luhn checksum over the digits (payment cards).
    Luhn,
    /// ISO 13616 mod-97 checksum and per-country length (IBAN).
    Iban,
    /// US SSN area/group/serial ranges (no 000, 666, 9xx areas; no 00 group; no 0000 serial).
    UsSsn,
    /// 7 to 15 digits, not all the same digit.
    Phone,
    /// A parseable IPv4 or IPv6 address.
    IpAddress,
    /// A plausible calendar date (month 1-12, day 1-31, year 1900-2100).
    Date,
}

/// Native (hand-written) detectors for digit-shaped classes, run on a digit pre-filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NativeDetector {
    /// 13-19 digits (plain or in groups of 4), known issuer prefix, Luhn-valid.
    Card,
    /// Country code + check digits + BBAN of the country's length, mod-97 valid.
    Iban,
    /// `AAA-GG-SSSS` with valid ranges.
    UsSsn,
    /// E.164 (`+` and 8-15 digits), US national `(415) 555-2671` / `415-555-2671`, and
    /// trunk-prefixed national numbers (`020 7946 0958`, `01 23 45 67 89`).
    Phone,
    /// Dotted-quad IPv4 and IPv6 (full, compressed, IPv4-mapped).
    IpAddress,
}

/// An ordered set of rules: the built-ins, possibly extended or overridden by rule files.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    specs: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// Why a rule file or rule could not be used. Messages name the rule and the fix; they never
/// contain scanned data.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule file is not valid TOML for the rule format: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("rule `{id}`: the regex does not compile: {message}")]
    Regex { id: String, message: String },
    #[error("rule `{id}`: give either `regex` or `detector`, not both and not neither")]
    RegexOrDetector { id: String },
    #[error("rule `{id}` appears twice in one rule file; ids must be unique")]
    DuplicateId { id: String },
    #[error("rule `{id}`: `{field}` must not be empty")]
    Empty { id: String, field: &'static str },
    #[error("rule `{id}`: key_context cannot be combined with a native detector; use a regex with a validator")]
    KeyContextWithDetector { id: String },
    #[error("{count} rules, built-in ones included: at most {max}; merge rules (one regex may hold alternatives) or switch unused built-ins off")]
    TooMany { count: usize, max: usize },
}

impl Rules {
    /// The built-in rule set (`rules/builtin.toml`).
    pub fn builtin() -> Rules {
        Rules::from_toml_str(BUILTIN_RULES_TOML).expect("built-in rules parse")
    }

    /// Only the rules in `text` (no built-ins).
    pub fn from_toml_str(text: &str) -> Result<Rules, RuleError> {
        let file: RuleFile = toml::from_str(text)?;
        let mut seen = HashMap::new();
        for spec in &file.rules {
            check_spec(spec)?;
            if seen.insert(spec.id.clone(), ()).is_some() {
                return Err(RuleError::DuplicateId {
                    id: spec.id.clone(),
                });
            }
        }
        Ok(Rules { specs: file.rules })
    }

    /// These rules with `overrides` applied: a rule whose id exists replaces it in place (or
    /// removes it when `enabled = false`); a new id is appended.
    pub fn extended_with(mut self, overrides: Rules) -> Rules {
        for spec in overrides.specs {
            match self
                .specs
                .iter()
                .position(|existing| existing.id == spec.id)
            {
                Some(index) => self.specs[index] = spec,
                None => self.specs.push(spec),
            }
        }
        self.specs.retain(|spec| spec.enabled);
        self
    }

    /// The built-ins extended or overridden by the rule file `text`.
    pub fn builtin_extended_with_toml(text: &str) -> Result<Rules, RuleError> {
        Ok(Rules::builtin().extended_with(Rules::from_toml_str(text)?))
    }

    /// The rules, in evaluation order.
    pub fn specs(&self) -> &[RuleSpec] {
        &self.specs
    }
}

fn check_spec(spec: &RuleSpec) -> Result<(), RuleError> {
    if spec.id.trim().is_empty() {
        return Err(RuleError::Empty {
            id: spec.id.clone(),
            field: "id",
        });
    }
    if spec.class.trim().is_empty() {
        return Err(RuleError::Empty {
            id: spec.id.clone(),
            field: "class",
        });
    }
    if !spec.enabled {
        return Ok(());
    }
    if spec.regex.is_some() == spec.detector.is_some() {
        return Err(RuleError::RegexOrDetector {
            id: spec.id.clone(),
        });
    }
    if spec.detector.is_some() && !spec.key_context.is_empty() {
        return Err(RuleError::KeyContextWithDetector {
            id: spec.id.clone(),
        });
    }
    if spec.keywords.iter().any(|keyword| keyword.is_empty()) {
        return Err(RuleError::Empty {
            id: spec.id.clone(),
            field: "keywords[]",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_parse_and_have_unique_ids() {
        let rules = Rules::builtin();
        assert!(rules.specs().len() >= 15);
    }
}
