//! Prometheus metrics, one registry per running pipeline, exposed by `GET /metrics`.
//!
//! Names follow the Prometheus naming guide (base units, `_total` counters).
//! The pipeline's event stream ([`Events`]) travels with the metrics: every
//! stage that counts something can also say what changed.

use crate::events::Events;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All CDRS metrics.
pub struct Metrics {
    pub registry: Registry,
    /// `cdrs_records_total{stage, outcome}`: records leaving each stage.
    /// stage: source | filter | router | delivery; outcome: in | kept |
    /// transformed | dropped | dead_lettered | routed | defaulted |
    /// delivered | rerouted.
    pub records: IntCounterVec,
    /// `cdrs_deliveries_total{target, result}`: delivery requests per target
    /// (an HTTP POST or a `kafka://` batch), result ok | error.
    pub deliveries: IntCounterVec,
    /// `cdrs_delivered_records_total{target}`.
    pub delivered_records: IntCounterVec,
    /// `cdrs_delivery_duration_seconds{target}`: delivery request latency.
    pub delivery_seconds: HistogramVec,
    /// `cdrs_plugin_call_duration_seconds{plugin, version, kind}`: one batch
    /// call; version: the first 12 hex digits of the component's sha256,
    /// kind: filter | router.
    pub plugin_call_seconds: HistogramVec,
    /// `cdrs_plugin_errors_total{plugin, version, kind}`: kind trap |
    /// deadline | memory | contract | output | compile | link | init;
    /// version as above (of the version refused, for compile | link |
    /// init; `unread` when its file could not be read).
    pub plugin_errors: IntCounterVec,
    /// `cdrs_shadow_records_total{shadow, result}`: records the shadow
    /// router decided; result agreed | differed (with the live router).
    pub shadow_records: IntCounterVec,
    /// `cdrs_shadow_decisions_total{shadow, target}`: where the shadow would
    /// have sent them: a target id, or `(default)`, `(drop)`,
    /// `(dead-letter)`.
    pub shadow_decisions: IntCounterVec,
    /// `cdrs_shadow_batches_total{shadow, result}`: sampled batches;
    /// result compared | skipped (the shadow was behind).
    pub shadow_batches: IntCounterVec,
    /// `cdrs_capacity_reports_total{result, reason}`: result accepted |
    /// rejected; reason (rejected only) invalid | invalid_id | oversized | out_of_range |
    /// future_timestamp | missing_server_id | id_mismatch | unknown_target |
    /// endpoint_not_allowed | rate_limited (`capacity.max_reports_per_second`)
    /// | too_many_targets (`capacity.max_dynamic_targets`) |
    /// join_rate_limited (`capacity.max_joins_per_second`).
    pub capacity_reports: IntCounterVec,
    /// `cdrs_capacity_dynamic_targets`: targets that joined by their own
    /// report (at most `capacity.max_dynamic_targets`).
    pub capacity_dynamic_targets: IntGauge,
    /// `cdrs_capacity_refresh_duration_seconds`: one rebuild of the target
    /// snapshot (grows with the number of targets; at most a few per
    /// `capacity.refresh_interval_ms`).
    pub capacity_refresh_seconds: Histogram,
    /// `cdrs_admin_refused_total{reason}`: admin API requests or
    /// connections refused before a handler ran. reason: token (missing or
    /// wrong bearer token) | host (`Host` not in `admin.allowed_hosts`) |
    /// origin (cross-origin mutation without a token) | connections
    /// (`admin.max_connections` reached) | uploads
    /// (`admin.max_concurrent_uploads` reached) | tls (a TLS handshake failed
    /// or timed out, e.g. no client certificate under `admin.tls.client_ca_file`).
    pub admin_refused: IntCounterVec,
    /// `cdrs_target_up{target}`: 1 healthy or degraded, 0 down.
    pub target_up: IntGaugeVec,
    /// `cdrs_target_inflight{target}`: CDRS's own in-flight records.
    pub target_inflight: IntGaugeVec,
    /// `cdrs_dead_letters_total{stage}`: records written to the dead-letter topic.
    pub dead_letters: IntCounterVec,
    /// `cdrs_offsets_stored_total{topic}`: stores of a partition's commit
    /// watermark when it moves.
    pub offsets_stored: IntCounterVec,
    /// `cdrs_delivery_retries_total{target}`: records sent again to the same
    /// target (each attempt after the first adds its batch's records).
    pub retries: IntCounterVec,
    /// `cdrs_rerouted_records_total{target, reason}`: records routed again away from a target.
    pub rerouted: IntCounterVec,
    /// `cdrs_split_batches_total{target}`: batches sent in halves after
    /// the target answered 413 Payload Too Large.
    pub split_batches: IntCounterVec,
    /// `cdrs_target_ejections_total{target}`: circuit breaker openings (outlier ejections).
    pub ejections: IntCounterVec,
    /// `cdrs_target_breaker_state{target}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `cdrs_target_queue_records{target}`: records queued for the target.
    pub target_queue: IntGaugeVec,
    /// `cdrs_sse_subscribers{stream}`: subscribers connected to an
    /// `sse://` stream.
    pub sse_subscribers: IntGaugeVec,
    /// `cdrs_sse_events_total{stream}`: events appended to the stream
    /// (records delivered to it; a record already in the buffer is not
    /// appended again).
    pub sse_events: IntCounterVec,
    /// `cdrs_sse_replay_buffer_records{stream}` and `…_bytes{stream}`.
    pub sse_buffer_records: IntGaugeVec,
    pub sse_buffer_bytes: IntGaugeVec,
    /// `cdrs_sse_subscriber_lag_records{stream}`: the largest lag of a
    /// connected subscriber, events, at the last append.
    pub sse_lag: IntGaugeVec,
    /// `cdrs_sse_cutoffs_total{stream, reason}`: subscribers cut off;
    /// reason lag (`delivery.sse.max_subscriber_lag_records`) | evicted
    /// (its next event left the replay buffer) | removed (the target left
    /// the config).
    pub sse_cutoffs: IntCounterVec,
    /// `cdrs_sse_resumes_total{stream, result}`: subscriptions with a
    /// `Last-Event-ID`; result replayed | lost (the id was not in the
    /// replay buffer).
    pub sse_resumes: IntCounterVec,
    /// `cdrs_partition_prefetched_records{topic, partition}`: records
    /// librdkafka fetched for the partition that its worker has not read
    /// yet (sampled every 100 ms); at most about `pipeline.prefetch_records`.
    pub partition_prefetched: IntGaugeVec,
    /// `cdrs_partition_inflight_records{topic, partition}`: records read but not finished.
    pub partition_inflight: IntGaugeVec,
    /// `cdrs_partition_lag_records{topic, partition}`: records between the
    /// partition's committed offset and its high watermark (librdkafka's
    /// `consumer_lag` statistic, every `statistics.interval.ms`, default
    /// 5000), for the partitions this process is assigned.
    pub partition_lag: IntGaugeVec,
    /// `cdrs_partition_lag_seconds{topic, partition}`: age of the oldest
    /// record of the partition this process has not finished, from its
    /// Kafka timestamp (when records wait unread, of the last one read: an
    /// upper bound); 0 when the lag in records is 0. Updated with
    /// `cdrs_partition_lag_records`.
    pub partition_lag_seconds: GaugeVec,
    /// `cdrs_tls_cert_expiry_timestamp_seconds{cert}`: when a certificate
    /// CDRS presents stops being valid, Unix seconds. cert: `admin` |
    /// `delivery` (`[delivery.tls]`) | `target/<id>` (`[targets.tls]`).
    pub tls_cert_expiry: IntGaugeVec,
    /// `cdrs_tls_rotations_total{cert, result}`: rotated TLS files taken
    /// (`ok`) or refused (`refused`: the previous ones stay in use).
    pub tls_rotations: IntCounterVec,
    /// What changed, for `GET /v1/events` and the dashboard.
    pub events: Events,
    /// Dead letters by stage and reason, for the dashboard.
    pub dead_letter_reasons: DeadLetterReasons,
}

/// Dead letters counted by stage and reason, for `GET /v1/stats`: reasons
/// are free text from plugins and delivery errors, so they are not a
/// Prometheus label. Each reason is cut to [`REASON_CHARS`] characters with
/// runs of digits written `N` (an offset or a count per record would make
/// every reason new); past [`REASONS_KEPT`] distinct reasons, new ones
/// count as `other`.
#[derive(Default)]
pub struct DeadLetterReasons(std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>);

/// Characters of a dead-letter reason kept by [`DeadLetterReasons`].
pub const REASON_CHARS: usize = 80;

/// Distinct (stage, reason) pairs kept by [`DeadLetterReasons`].
pub const REASONS_KEPT: usize = 64;

impl DeadLetterReasons {
    /// Counts one dead letter.
    pub fn count(&self, stage: &str, reason: &str) {
        let mut class = String::with_capacity(reason.len().min(REASON_CHARS));
        let mut digits = false;
        for c in reason.chars().take(REASON_CHARS) {
            if c.is_ascii_digit() {
                if !digits {
                    class.push('N');
                }
                digits = true;
            } else {
                class.push(c);
                digits = false;
            }
        }
        let mut all = self.0.lock().expect("dead-letter reasons lock");
        let key = (stage.to_string(), class);
        if !all.contains_key(&key) && all.len() >= REASONS_KEPT {
            *all.entry((stage.to_string(), "other".into())).or_default() += 1;
            return;
        }
        *all.entry(key).or_default() += 1;
    }

    /// `[(stage, reason, count)]`, counts since the start.
    pub fn totals(&self) -> Vec<(String, String, u64)> {
        let all = self.0.lock().expect("dead-letter reasons lock");
        all.iter()
            .map(|((s, r), n)| (s.clone(), r.clone(), *n))
            .collect()
    }
}

/// One target's delivery counters, for `GET /v1/stats` (counts since the
/// start; a reader takes differences between two reads).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TargetStats {
    pub delivered_records: u64,
    pub deliveries_ok: u64,
    pub deliveries_error: u64,
    pub retried_records: u64,
    pub rerouted_records: u64,
    pub ejections: u64,
    /// Records in CDRS's queue for the target now.
    pub queue_records: i64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: i64,
    /// `cdrs_delivery_duration_seconds` buckets: `[upper bound s,
    /// cumulative count]`.
    pub latency_buckets: Vec<(f64, u64)>,
    /// Deliveries timed (the histogram's count).
    pub latency_count: u64,
}

impl Metrics {
    /// A fresh registry; one per running pipeline (tests run several).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], start: f64| {
            let opts = HistogramOpts::new(name, help)
                .buckets(exponential_buckets(start, 2.0, 20).expect("valid buckets"));
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Metrics {
            records: counter(
                "cdrs_records_total",
                "Records leaving each pipeline stage",
                &["stage", "outcome"],
            ),
            deliveries: counter(
                "cdrs_deliveries_total",
                "Delivery requests per target",
                &["target", "result"],
            ),
            delivered_records: counter(
                "cdrs_delivered_records_total",
                "Records delivered per target",
                &["target"],
            ),
            delivery_seconds: histogram(
                "cdrs_delivery_duration_seconds",
                "Delivery request latency",
                &["target"],
                0.0001,
            ),
            plugin_call_seconds: histogram(
                "cdrs_plugin_call_duration_seconds",
                "Plugin batch call duration",
                &["plugin", "version", "kind"],
                0.000_001,
            ),
            plugin_errors: counter(
                "cdrs_plugin_errors_total",
                "Plugin failures by kind",
                &["plugin", "version", "kind"],
            ),
            shadow_records: counter(
                "cdrs_shadow_records_total",
                "Records the shadow router decided, by agreement with the live router",
                &["shadow", "result"],
            ),
            shadow_decisions: counter(
                "cdrs_shadow_decisions_total",
                "Where the shadow router would have sent records",
                &["shadow", "target"],
            ),
            shadow_batches: counter(
                "cdrs_shadow_batches_total",
                "Batches sampled for the shadow router, compared or skipped",
                &["shadow", "result"],
            ),
            capacity_reports: counter(
                "cdrs_capacity_reports_total",
                "Capacity reports received",
                &["result", "reason"],
            ),
            capacity_dynamic_targets: {
                let g = IntGauge::new(
                    "cdrs_capacity_dynamic_targets",
                    "Targets that joined by their own capacity report",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            capacity_refresh_seconds: {
                let opts = HistogramOpts::new(
                    "cdrs_capacity_refresh_duration_seconds",
                    "Time to rebuild the target snapshot",
                )
                .buckets(exponential_buckets(0.000_01, 2.0, 20).expect("valid buckets"));
                let h = Histogram::with_opts(opts).expect("valid metric");
                registry
                    .register(Box::new(h.clone()))
                    .expect("unique metric");
                h
            },
            admin_refused: counter(
                "cdrs_admin_refused_total",
                "Admin API requests and connections refused before a handler ran",
                &["reason"],
            ),
            tls_cert_expiry: gauge(
                "cdrs_tls_cert_expiry_timestamp_seconds",
                "When a certificate CDRS presents expires (Unix seconds)",
                &["cert"],
            ),
            tls_rotations: counter(
                "cdrs_tls_rotations_total",
                "Rotated TLS files taken or refused",
                &["cert", "result"],
            ),
            target_up: gauge(
                "cdrs_target_up",
                "Whether the target can get new records",
                &["target"],
            ),
            target_inflight: gauge(
                "cdrs_target_inflight",
                "Records in flight to the target",
                &["target"],
            ),
            dead_letters: counter(
                "cdrs_dead_letters_total",
                "Records sent to the dead-letter topic",
                &["stage"],
            ),
            offsets_stored: counter(
                "cdrs_offsets_stored_total",
                "Offset stores after completed batches",
                &["topic"],
            ),
            retries: counter(
                "cdrs_delivery_retries_total",
                "Records sent again to the same target after a failed attempt",
                &["target"],
            ),
            rerouted: counter(
                "cdrs_rerouted_records_total",
                "Records routed again away from a target",
                &["target", "reason"],
            ),
            split_batches: counter(
                "cdrs_split_batches_total",
                "Batches sent in halves after a 413 Payload Too Large, per target",
                &["target"],
            ),
            ejections: counter(
                "cdrs_target_ejections_total",
                "Circuit breaker openings (outlier ejections) per target",
                &["target"],
            ),
            breaker_state: gauge(
                "cdrs_target_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                &["target"],
            ),
            target_queue: gauge(
                "cdrs_target_queue_records",
                "Records queued for delivery to the target",
                &["target"],
            ),
            sse_subscribers: gauge(
                "cdrs_sse_subscribers",
                "Subscribers connected to an sse:// stream",
                &["stream"],
            ),
            sse_events: counter(
                "cdrs_sse_events_total",
                "Events appended to an sse:// stream",
                &["stream"],
            ),
            sse_buffer_records: gauge(
                "cdrs_sse_replay_buffer_records",
                "Events held in the stream's replay buffer",
                &["stream"],
            ),
            sse_buffer_bytes: gauge(
                "cdrs_sse_replay_buffer_bytes",
                "Bytes of event data held in the stream's replay buffer",
                &["stream"],
            ),
            sse_lag: gauge(
                "cdrs_sse_subscriber_lag_records",
                "Largest lag of a connected subscriber, events",
                &["stream"],
            ),
            sse_cutoffs: counter(
                "cdrs_sse_cutoffs_total",
                "Subscribers cut off: lag, evicted or removed",
                &["stream", "reason"],
            ),
            sse_resumes: counter(
                "cdrs_sse_resumes_total",
                "Subscriptions resuming from a Last-Event-ID: replayed or lost",
                &["stream", "result"],
            ),
            partition_prefetched: gauge(
                "cdrs_partition_prefetched_records",
                "records fetched for the partition and not yet read by its worker",
                &["topic", "partition"],
            ),
            partition_inflight: gauge(
                "cdrs_partition_inflight_records",
                "Records read from the partition and not yet finished",
                &["topic", "partition"],
            ),
            partition_lag: gauge(
                "cdrs_partition_lag_records",
                "Records between the committed offset and the high watermark of an assigned partition",
                &["topic", "partition"],
            ),
            partition_lag_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "cdrs_partition_lag_seconds",
                        "Age of the oldest record of an assigned partition not yet finished",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            registry,
            events: Events::default(),
            dead_letter_reasons: DeadLetterReasons::default(),
        }
    }

    /// Adds `n` to `cdrs_records_total{stage, outcome}`.
    pub fn count(&self, stage: &str, outcome: &str, n: usize) {
        if n > 0 {
            self.records
                .with_label_values(&[stage, outcome])
                .inc_by(n as u64);
        }
    }

    /// Every target's delivery counters, by target id.
    pub fn target_stats(&self) -> std::collections::BTreeMap<String, TargetStats> {
        use prometheus::core::Collector;
        let mut out: std::collections::BTreeMap<String, TargetStats> = Default::default();
        let label = |m: &prometheus::proto::Metric, n: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == n)
                .map(|l| l.value().to_string())
        };
        let mut each =
            |c: &dyn Collector, f: &mut dyn FnMut(&mut TargetStats, &prometheus::proto::Metric)| {
                for family in c.collect() {
                    for m in family.get_metric() {
                        if let Some(id) = label(m, "target") {
                            f(out.entry(id).or_default(), m);
                        }
                    }
                }
            };
        let counter = |m: &prometheus::proto::Metric| m.get_counter().get_value() as u64;
        let gauge = |m: &prometheus::proto::Metric| m.get_gauge().get_value() as i64;
        each(&self.delivered_records, &mut |t, m| {
            t.delivered_records = counter(m)
        });
        each(
            &self.deliveries,
            &mut |t, m| match label(m, "result").as_deref() {
                Some("ok") => t.deliveries_ok = counter(m),
                _ => t.deliveries_error += counter(m),
            },
        );
        each(&self.retries, &mut |t, m| t.retried_records = counter(m));
        each(&self.rerouted, &mut |t, m| t.rerouted_records += counter(m));
        each(&self.ejections, &mut |t, m| t.ejections = counter(m));
        each(&self.target_queue, &mut |t, m| t.queue_records = gauge(m));
        each(&self.breaker_state, &mut |t, m| t.breaker_state = gauge(m));
        each(&self.delivery_seconds, &mut |t, m| {
            t.latency_buckets = m
                .get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            t.latency_count = m.get_histogram().get_sample_count();
        });
        out
    }

    /// `cdrs_plugin_errors_total{plugin, kind}` summed over the versions.
    pub fn plugin_errors_of(&self, plugin: &str, kind: &str) -> u64 {
        use prometheus::core::Collector;
        let families = self.plugin_errors.collect();
        families
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                };
                label("plugin").as_deref() == Some(plugin) && label("kind").as_deref() == Some(kind)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Current value of `cdrs_records_total{stage, outcome}`.
    pub fn get(&self, stage: &str, outcome: &str) -> u64 {
        self.records.with_label_values(&[stage, outcome]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
