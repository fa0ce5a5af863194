//! Every conversion between the WIT binding types and the host's own
//! types (records, verdicts, decisions, targets), in one place.

use super::bindings::types as wit;
use crate::capacity::{Health, TargetView};
use crate::record::Record;
use cdrs_plugin_sdk::layout::{codes, Tables};

/// Encodes records of one partition as the contract's packed `batch`
/// (layout in `sdk/wit/plugin.wit`, written by the SDK's `layout::Tables`)
/// into `out`, reusing its buffers: a plugin instance keeps one `wit::Batch`,
/// so once its buffers have grown to the batch size a call allocates
/// nothing here. `headers` picks the headers to pass (all for filters; the
/// ones a router asked for); `values` whether payloads are passed.
///
/// Lowering this shape costs four copies per call whatever the batch size;
/// a `list<record>` would cost a store per field per record.
pub fn batch_into(
    out: &mut wit::Batch,
    topic: &str,
    partition: i32,
    records: &[&Record],
    headers: HeaderSelection<'_>,
    values: bool,
) {
    if out.topic != topic {
        out.topic.clear();
        out.topic.push_str(topic);
    }
    out.partition = partition;
    let mut t = Tables {
        count: 0,
        records: std::mem::take(&mut out.records),
        headers: std::mem::take(&mut out.headers),
        data: std::mem::take(&mut out.data),
    };
    for buf in [&mut t.records, &mut t.headers, &mut t.data] {
        // A batch of large records does not pin its memory per instance.
        if buf.capacity() > KEEP_BATCH_BYTES {
            *buf = Vec::new();
        }
        buf.clear();
    }
    for r in records {
        t.push(
            r.offset,
            r.timestamp_ms,
            r.key.as_deref(),
            if values { r.value.as_deref() } else { None },
            r.headers
                .iter()
                .filter(|(k, _)| headers.passes(k))
                .map(|(k, v)| (k.as_str(), v.as_deref())),
        );
    }
    out.count = t.count;
    out.records = t.records;
    out.headers = t.headers;
    out.data = t.data;
}

/// Buffer capacity a plugin instance reuses between calls, bytes (4 MiB:
/// a batch of 1,024 records of 4 KiB). A buffer that grew past it for one
/// large batch is released at the next call instead of reused, so an
/// instance does not keep the memory of its largest batch.
pub const KEEP_BATCH_BYTES: usize = 4 << 20;

/// An empty batch, to be filled by [`batch_into`].
pub fn empty_batch() -> wit::Batch {
    wit::Batch {
        topic: String::new(),
        partition: 0,
        count: 0,
        records: Vec::new(),
        headers: Vec::new(),
        data: Vec::new(),
    }
}

/// Which record headers go into a batch.
#[derive(Clone, Copy)]
pub enum HeaderSelection<'a> {
    All,
    /// Exact, case-sensitive keys.
    Only(&'a [String]),
}

impl HeaderSelection<'_> {
    fn passes(&self, key: &str) -> bool {
        match self {
            HeaderSelection::All => true,
            HeaderSelection::Only(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// A packed `verdicts` (contract 1.1) as one verdict per record, checked
/// against the contract: `n` codes, each known, and exactly one rewrite per
/// `transform` and one reason per `dead-letter`.
///
/// Errors: what is wrong, for a `PluginError::Contract`.
pub fn unpack_verdicts(v: wit::Verdicts, n: usize) -> Result<Vec<wit::Verdict>, String> {
    if v.codes.len() != n {
        return Err(format!(
            "returned {} verdicts for {} records",
            v.codes.len(),
            n
        ));
    }
    // Counts of the four known codes; the first unknown one is an error.
    let mut seen = [0usize; codes::DEAD_LETTER as usize + 1];
    for (i, &c) in v.codes.iter().enumerate() {
        match seen.get_mut(usize::from(c)) {
            Some(n) => *n += 1,
            None => {
                return Err(format!(
                    "returned verdict code {c} for record {i} (valid: 0 keep, 1 drop, \
                     2 transform, 3 dead-letter)"
                ))
            }
        }
    }
    let (transforms, dead) = (
        seen[codes::TRANSFORM as usize],
        seen[codes::DEAD_LETTER as usize],
    );
    if v.rewrites.len() != transforms || v.reasons.len() != dead {
        return Err(format!(
            "returned {} rewrites for {transforms} transform codes and {} reasons for \
             {dead} dead-letter codes",
            v.rewrites.len(),
            v.reasons.len()
        ));
    }
    let (mut rewrites, mut reasons) = (v.rewrites.into_iter(), v.reasons.into_iter());
    Ok(v.codes
        .iter()
        .map(|&c| match c {
            codes::KEEP => wit::Verdict::Keep,
            codes::TRANSFORM => wit::Verdict::Transform(rewrites.next().expect("counted above")),
            codes::DEAD_LETTER => wit::Verdict::DeadLetter(reasons.next().expect("counted above")),
            _ => wit::Verdict::Drop,
        })
        .collect())
}

/// Maps a packed `decisions` (contract 1.1) through `each`, one decision
/// per record, after checking it against the contract: `n` entries, and
/// exactly one fan-out list per `route-many` code and one reason per
/// `dead-letter` code. Target indexes are `each`'s to check, as for
/// unpacked decisions.
///
/// Errors: what is wrong, for a `PluginError::Contract`.
pub fn unpack_decisions<T>(
    d: wit::Decisions,
    n: usize,
    mut each: impl FnMut(wit::Decision) -> T,
) -> Result<Vec<T>, String> {
    if d.targets.len() != n {
        return Err(format!(
            "returned {} decisions for {} records",
            d.targets.len(),
            n
        ));
    }
    let (mut many, mut dead) = (0, 0);
    for &t in &d.targets {
        many += usize::from(t == codes::ROUTE_MANY);
        dead += usize::from(t == codes::ROUTE_DEAD_LETTER);
    }
    if d.many.len() != many || d.reasons.len() != dead {
        return Err(format!(
            "returned {} fan-out lists for {many} route-many codes and {} reasons for \
             {dead} dead-letter codes",
            d.many.len(),
            d.reasons.len()
        ));
    }
    let (mut lists, mut reasons) = (d.many.into_iter(), d.reasons.into_iter());
    Ok(d.targets
        .iter()
        .map(|&t| {
            each(match t {
                codes::ROUTE_DEFAULT => wit::Decision::Default,
                codes::ROUTE_DROP => wit::Decision::Drop,
                codes::ROUTE_DEAD_LETTER => {
                    wit::Decision::DeadLetter(reasons.next().expect("counted above"))
                }
                codes::ROUTE_MANY => wit::Decision::RouteMany(lists.next().expect("counted above")),
                i => wit::Decision::Route(i),
            })
        })
        .collect())
}

/// Applies a filter's `transform` verdict: key, value and headers replaced.
pub fn apply_rewrite(r: &mut Record, rw: wit::Rewrite) {
    r.key = rw.key;
    r.value = rw.value;
    r.headers = rw
        .headers
        .into_iter()
        .filter(|h| !crate::record::is_reserved_header(&h.key))
        .map(|h| (h.key, h.value))
        .collect();
}

/// Bytes of a rewrite (key, value, header keys and values).
pub fn rewrite_bytes(rw: &wit::Rewrite) -> usize {
    rw.key.as_ref().map_or(0, Vec::len)
        + rw.value.as_ref().map_or(0, Vec::len)
        + rw.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// A snapshot target as the WIT `target` record.
pub fn wit_target(t: &TargetView) -> wit::Target {
    wit::Target {
        id: t.id.to_string(),
        zone: t.zone.clone(),
        labels: t.labels.clone(),
        weight: t.weight,
        capacity: t.capacity,
        inflight: t.inflight,
        queue_depth: t.queue_depth,
        cpu_permille: t.cpu_permille,
        latency_ewma_us: t.latency_ewma_us,
        error_rate_permille: t.error_rate_permille,
        health: match t.health {
            Health::Healthy => wit::Health::Healthy,
            Health::Degraded => wit::Health::Degraded,
            Health::Down => wit::Health::Down,
        },
        report_age_ms: t
            .report_age_ms
            .map_or(u32::MAX, |a| a.min(u32::MAX as u64 - 1) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(v: &[u8]) -> wit::Rewrite {
        wit::Rewrite {
            key: None,
            value: Some(v.to_vec()),
            headers: vec![],
        }
    }

    fn verdicts(codes: &[u8], rewrites: usize, reasons: usize) -> wit::Verdicts {
        wit::Verdicts {
            codes: codes.to_vec(),
            rewrites: (0..rewrites).map(|i| rewrite(&[i as u8])).collect(),
            reasons: (0..reasons).map(|i| format!("r{i}")).collect(),
        }
    }

    #[test]
    fn packed_verdicts_unpack_in_record_order() {
        let v = unpack_verdicts(verdicts(&[0, 3, 2, 1, 2, 3], 2, 2), 6).unwrap();
        assert!(matches!(v[0], wit::Verdict::Keep));
        assert!(matches!(&v[1], wit::Verdict::DeadLetter(r) if r == "r0"));
        assert!(
            matches!(&v[2], wit::Verdict::Transform(rw) if rw.value.as_deref() == Some(&[0][..]))
        );
        assert!(matches!(v[3], wit::Verdict::Drop));
        assert!(
            matches!(&v[4], wit::Verdict::Transform(rw) if rw.value.as_deref() == Some(&[1][..]))
        );
        assert!(matches!(&v[5], wit::Verdict::DeadLetter(r) if r == "r1"));
    }

    #[test]
    fn packed_verdicts_that_break_the_contract_are_refused_with_the_reason() {
        let err = |v, n| unpack_verdicts(v, n).unwrap_err();
        assert_eq!(
            err(verdicts(&[0, 0], 0, 0), 3),
            "returned 2 verdicts for 3 records"
        );
        assert_eq!(
            err(verdicts(&[0, 7], 0, 0), 2),
            "returned verdict code 7 for record 1 (valid: 0 keep, 1 drop, 2 transform, 3 dead-letter)"
        );
        assert_eq!(
            err(verdicts(&[2, 3], 0, 1), 2),
            "returned 0 rewrites for 1 transform codes and 1 reasons for 1 dead-letter codes"
        );
        assert!(err(verdicts(&[0], 0, 1), 1).contains("1 reasons for 0 dead-letter codes"));
    }

    fn decisions(targets: &[u32], many: Vec<Vec<u32>>, reasons: usize) -> wit::Decisions {
        wit::Decisions {
            targets: targets.to_vec(),
            many,
            reasons: (0..reasons).map(|i| format!("r{i}")).collect(),
        }
    }

    #[test]
    fn packed_decisions_unpack_in_record_order() {
        let d = decisions(
            &[
                5,
                codes::ROUTE_MANY,
                codes::ROUTE_DROP,
                codes::ROUTE_DEAD_LETTER,
                codes::ROUTE_DEFAULT,
                codes::ROUTE_MANY,
            ],
            vec![vec![1, 2], vec![]],
            1,
        );
        let got = unpack_decisions(d, 6, |d| format!("{d:?}")).unwrap();
        assert_eq!(
            got,
            [
                "Decision::Route(5)",
                "Decision::RouteMany([1, 2])",
                "Decision::Drop",
                "Decision::DeadLetter(\"r0\")",
                "Decision::Default",
                "Decision::RouteMany([])"
            ]
        );
    }

    #[test]
    fn packed_decisions_that_break_the_contract_are_refused_with_the_reason() {
        let err = |d, n| unpack_decisions(d, n, |_| ()).unwrap_err();
        assert_eq!(
            err(decisions(&[0], vec![], 0), 2),
            "returned 1 decisions for 2 records"
        );
        assert_eq!(
            err(decisions(&[codes::ROUTE_MANY], vec![], 0), 1),
            "returned 0 fan-out lists for 1 route-many codes and 0 reasons for 0 dead-letter codes"
        );
        assert!(err(decisions(&[0], vec![], 2), 1).contains("2 reasons for 0 dead-letter codes"));
    }
}
