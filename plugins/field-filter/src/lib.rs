//! `field-filter`: keeps, drops or dead-letters records by a JSON field of the
//! value or by a header.
//!
//! Config (the plugin's `config` table in the CDRS config, passed as JSON):
//!
//! ```toml
//! [filters.config]
//! # What to do with a value that is not a JSON document: "keep", "drop" or
//! # "dead-letter" (default "keep"). Only checked when a rule reads a field.
//! non_json = "dead-letter"
//!
//! # Optional: add this header, value "field-filter", to every kept record
//! # (provenance: which filter version handled it). Default: none.
//! stamp_header = "x-filtered-by"
//!
//! # Rules are tried in order; the first that matches decides. No match: keep.
//! [[filters.config.rules]]
//! field = "type"          # dotted path into the JSON value, e.g. "trade.side"
//! equals = "heartbeat"    # any JSON value; or `in = [..]`, or `exists = true|false`
//! action = "drop"         # "keep" | "drop" | "dead-letter"
//!
//! [[filters.config.rules]]
//! header = "x-source"     # exact header key; its value compared as a UTF-8 string
//! equals = "replay"
//! action = "dead-letter"
//! reason = "replayed records are not routed"
//! ```

use cdrs_plugin_sdk::filter::{stamp, Batch, Filter, Record, Verdict};
use cdrs_plugin_sdk::json::{equals, lookup_span};
use serde::Deserialize;
use serde_json::Value;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Keep,
    Drop,
    DeadLetter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    field: Option<String>,
    header: Option<String>,
    equals: Option<Value>,
    #[serde(rename = "in")]
    in_: Option<Vec<Value>>,
    exists: Option<bool>,
    action: Action,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default = "default_non_json")]
    non_json: Action,
    #[serde(default)]
    stamp_header: Option<String>,
}

fn default_non_json() -> Action {
    Action::Keep
}

enum Subject {
    Field(Vec<String>),
    Header(String),
}

enum Test {
    Equals(Value),
    In(Vec<Value>),
    Exists(bool),
}

struct Rule {
    subject: Subject,
    test: Test,
    action: Action,
    reason: String,
}

/// The filter: rules parsed once at `init`.
pub struct FieldFilter {
    rules: Vec<Rule>,
    non_json: Action,
    reads_json: bool,
    stamp_header: Option<String>,
    /// Per-rule field of the record at hand, where its JSON text is in the
    /// value: reused across records (one allocation per instance, not one
    /// per record), and nothing built from the document.
    fields: Vec<Option<std::ops::Range<usize>>>,
}

impl FieldFilter {
    fn parse(config: &str) -> Result<Self, String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let raw: FilterConfig = serde_json::from_str(config)
            .map_err(|e| format!("invalid field-filter config: {e}"))?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let subject = match (r.field, r.header) {
                (Some(f), None) => Subject::Field(f.split('.').map(str::to_owned).collect()),
                (None, Some(h)) => Subject::Header(h),
                _ => {
                    return Err(format!(
                        "rules[{i}]: give exactly one of `field` (JSON path) or `header`"
                    ))
                }
            };
            let test = match (r.equals, r.in_, r.exists) {
                (Some(v), None, None) => Test::Equals(v),
                (None, Some(vs), None) => Test::In(vs),
                (None, None, Some(b)) => Test::Exists(b),
                _ => {
                    return Err(format!(
                        "rules[{i}]: give exactly one of `equals`, `in` or `exists`"
                    ))
                }
            };
            let reason = r
                .reason
                .unwrap_or_else(|| format!("field-filter rule {i} matched"));
            rules.push(Rule {
                subject,
                test,
                action: r.action,
                reason,
            });
        }
        let reads_json = rules.iter().any(|r| matches!(r.subject, Subject::Field(_)));
        Ok(FieldFilter {
            rules,
            non_json: raw.non_json,
            reads_json,
            stamp_header: raw.stamp_header,
            fields: Vec::new(),
        })
    }

    fn verdict_for(&mut self, r: &Record<'_>) -> Verdict {
        // Field rules read only their path (no document tree is built); a
        // value that is not one JSON document takes the `non_json` action
        // before any rule, as documented.
        let fields = &mut self.fields;
        fields.clear();
        if self.reads_json {
            let Some(doc) = r.value() else {
                return act(self.non_json, NOT_JSON);
            };
            for rule in &self.rules {
                let found = match &rule.subject {
                    Subject::Field(path) => match lookup_span(doc, path) {
                        Ok(span) => span,
                        Err(_) => return act(self.non_json, NOT_JSON),
                    },
                    Subject::Header(_) => None,
                };
                fields.push(found);
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let header;
            let found: Option<&[u8]> = match &rule.subject {
                Subject::Field(_) => fields[i].clone().and_then(|span| r.value()?.get(span)),
                Subject::Header(h) => {
                    // A header compares as a JSON string of its UTF-8 text.
                    header = r.header(h).map(|v| {
                        serde_json::to_vec(&String::from_utf8_lossy(v)).unwrap_or_default()
                    });
                    header.as_deref()
                }
            };
            let hit = match &rule.test {
                Test::Equals(v) => found.is_some_and(|f| equals(f, v)),
                Test::In(vs) => found.is_some_and(|f| vs.iter().any(|v| equals(f, v))),
                Test::Exists(b) => found.is_some() == *b,
            };
            if hit {
                return act(rule.action, &rule.reason);
            }
        }
        Verdict::Keep
    }
}

const NOT_JSON: &str = "value is not a JSON document";

/// The verdict of `action`; the reason is copied only for a dead letter.
fn act(action: Action, reason: &str) -> Verdict {
    match action {
        Action::Keep => Verdict::Keep,
        Action::Drop => Verdict::Drop,
        Action::DeadLetter => Verdict::DeadLetter(reason.to_string()),
    }
}

impl Filter for FieldFilter {
    fn init(config: &str) -> Result<Self, String> {
        Self::parse(config)
    }

    fn filter(&mut self, batch: Batch) -> Vec<Verdict> {
        batch
            .records()
            .map(|r| match self.verdict_for(&r) {
                Verdict::Keep => match &self.stamp_header {
                    Some(h) => Verdict::Transform(stamp(&r, h, "field-filter")),
                    None => Verdict::Keep,
                },
                v => v,
            })
            .collect()
    }
}

cdrs_plugin_sdk::export_filter!(FieldFilter);

#[cfg(test)]
mod tests {
    use super::*;
    /// Verdict for one record with this value and headers.
    fn verdict(f: &mut FieldFilter, value: &str, headers: &[(&str, &str)]) -> Verdict {
        let headers: Vec<_> = headers
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .collect();
        let b = Batch::of("t", 0, &[(1, None, Some(value.as_bytes()), &headers)]);
        let r = b.records().next().unwrap();
        f.verdict_for(&r)
    }

    fn is(v: &Verdict, want: &str) -> bool {
        matches!(
            (v, want),
            (Verdict::Keep, "keep") | (Verdict::Drop, "drop") | (Verdict::DeadLetter(_), "dl")
        )
    }

    #[test]
    fn drops_heartbeats_and_dead_letters_non_json() {
        let mut f = FieldFilter::parse(
            r#"{"non_json":"dead-letter","rules":[{"field":"type","equals":"heartbeat","action":"drop"}]}"#,
        )
        .unwrap();
        assert!(is(&verdict(&mut f, r#"{"type":"heartbeat"}"#, &[]), "drop"));
        assert!(is(&verdict(&mut f, r#"{"type":"trade"}"#, &[]), "keep"));
        assert!(is(&verdict(&mut f, "not json", &[]), "dl"));
    }

    #[test]
    fn nested_fields_headers_in_and_exists() {
        let mut f = FieldFilter::parse(
            r#"{"rules":[
                {"header":"x-source","equals":"replay","action":"dead-letter","reason":"replay"},
                {"field":"trade.side","in":["buy","sell"],"action":"keep"},
                {"field":"trade","exists":true,"action":"drop"}]}"#,
        )
        .unwrap();
        let dl = verdict(&mut f, "{}", &[("x-source", "replay")]);
        assert!(matches!(dl, Verdict::DeadLetter(ref r) if r == "replay"));
        assert!(is(
            &verdict(&mut f, r#"{"trade":{"side":"buy"}}"#, &[]),
            "keep"
        ));
        assert!(is(
            &verdict(&mut f, r#"{"trade":{"side":"hold"}}"#, &[]),
            "drop"
        ));
        assert!(is(&verdict(&mut f, r#"{"other":1}"#, &[]), "keep"));
    }

    #[test]
    fn bad_config_names_the_rule() {
        let e = FieldFilter::parse(r#"{"rules":[{"action":"drop","equals":1}]}"#)
            .err()
            .unwrap();
        assert!(e.contains("rules[0]"), "{e}");
        let e = FieldFilter::parse(r#"{"rulez":[]}"#).err().unwrap();
        assert!(e.contains("rulez"), "{e}");
    }
}
