//! `example-filter` (Rust): the portable example filter of
//! `sdk/example-policy.md`, with the same verdicts as the Python, JavaScript
//! and C examples (the conformance suite checks it). The first rule that
//! applies decides: missing key → dead-letter (`require_key`), value over
//! `max_value_bytes` → dead-letter, header `deny_header` present → drop,
//! `stamp_header` set → transform with that header appended, else keep.
//!
//! Config (JSON): `{"require_key": false, "max_value_bytes": null,
//! "deny_header": null, "stamp_header": null}`.

use cdrs_plugin_sdk::filter::{stamp, Batch, Filter, Record, Verdict};
use serde::Deserialize;

/// Value of the header the filter appends with `stamp_header`.
pub const STAMP_VALUE: &str = "example-filter";

/// The filter; its config is all its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleFilter {
    #[serde(default)]
    require_key: bool,
    #[serde(default)]
    max_value_bytes: Option<u64>,
    #[serde(default)]
    deny_header: Option<String>,
    #[serde(default)]
    stamp_header: Option<String>,
}

impl ExampleFilter {
    fn verdict(&self, r: &Record<'_>) -> Verdict {
        if self.require_key && r.key().is_none() {
            return Verdict::DeadLetter("missing key".into());
        }
        if let (Some(max), Some(value)) = (self.max_value_bytes, r.value()) {
            if value.len() as u64 > max {
                return Verdict::DeadLetter(format!(
                    "value is {} bytes, over max_value_bytes {max}",
                    value.len()
                ));
            }
        }
        if let Some(deny) = &self.deny_header {
            if r.headers().any(|(k, _)| k == deny) {
                return Verdict::Drop;
            }
        }
        match &self.stamp_header {
            Some(h) => Verdict::Transform(stamp(r, h, STAMP_VALUE)),
            None => Verdict::Keep,
        }
    }
}

impl Filter for ExampleFilter {
    fn init(config: &str) -> Result<Self, String> {
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        // serde also fills a struct from a JSON array, by position.
        if !config.trim_start().starts_with('{') {
            return Err("invalid example-filter config: expected a JSON object".into());
        }
        serde_json::from_str(config).map_err(|e| format!("invalid example-filter config: {e}"))
    }

    fn filter(&mut self, batch: Batch) -> Vec<Verdict> {
        batch.records().map(|r| self.verdict(&r)).collect()
    }
}

cdrs_plugin_sdk::export_filter!(ExampleFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use cdrs_plugin_sdk::filter::{Header, Rewrite};

    #[test]
    fn first_rule_that_applies_decides() {
        let mut f = ExampleFilter::init(
            r#"{"require_key": true, "max_value_bytes": 3, "deny_header": "x-deny", "stamp_header": "x-by"}"#,
        )
        .unwrap();
        let batch = Batch::of(
            "t",
            0,
            &[
                (0, None, Some(b"abcdef"), &[]),
                (1, Some(b"k"), Some(b"abcdef"), &[]),
                (2, Some(b"k"), Some(b"ab"), &[("x-deny", None)]),
                (3, Some(b"k"), None, &[("h", Some(b"v"))]),
            ],
        );
        assert_eq!(
            f.filter(batch),
            [
                Verdict::DeadLetter("missing key".into()),
                Verdict::DeadLetter("value is 6 bytes, over max_value_bytes 3".into()),
                Verdict::Drop,
                Verdict::Transform(Rewrite {
                    key: Some(b"k".to_vec()),
                    value: None,
                    headers: vec![
                        Header {
                            key: "h".into(),
                            value: Some(b"v".to_vec())
                        },
                        Header {
                            key: "x-by".into(),
                            value: Some(STAMP_VALUE.as_bytes().to_vec())
                        },
                    ],
                }),
            ]
        );
    }

    #[test]
    fn empty_config_keeps_everything_and_bad_config_is_refused() {
        let mut f = ExampleFilter::init("").unwrap();
        let batch = Batch::of("t", 0, &[(0, None, None, &[])]);
        assert_eq!(f.filter(batch), [Verdict::Keep]);
        for bad in [
            r#"{"require_key": 1}"#,
            r#"{"max_value_bytes": -1}"#,
            r#"{"x": 1}"#,
            "[]",
        ] {
            assert!(ExampleFilter::init(bad).is_err(), "{bad} accepted");
        }
    }
}
