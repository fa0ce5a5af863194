//! Configuration: one TOML file, parsed into raw serde structs
//! (`deny_unknown_fields`), then validated as a whole.
//!
//! Validation reports every problem at once, each naming the key, what is
//! wrong and what would be valid. Environment overrides (for secrets and
//! per-host values): `CDRS_KAFKA_BROKERS`, `CDRS_ADMIN_TOKEN`.
//!
//! Every default is a named constant below, documented on its field.

mod endpoint;

pub use endpoint::EndpointPattern;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Default `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default `kafka.dead_letter_topic`.
pub const DEFAULT_DEAD_LETTER_TOPIC: &str = "cdrs-dead-letter";
/// Default `pipeline.batch_size` (records per plugin call).
pub const DEFAULT_BATCH_SIZE: usize = 256;
/// Default `pipeline.batch_linger_ms`: none. A partition worker takes what
/// its queue holds; under load a batch fills while the previous one is
/// processed, and at low rates a linger only adds latency (5 ms added 5 ms
/// to p50 on the embedded broker, with no throughput gain on either broker
/// in `cdrs bench`; see `docs/performance.md`).
pub const DEFAULT_BATCH_LINGER_MS: u64 = 0;
/// Largest `pipeline.batch_linger_ms`: a partition worker holding records
/// longer than a second only delays them (and a revoke or shutdown waits
/// for the batch it holds).
pub const MAX_BATCH_LINGER_MS: u64 = 1_000;
/// Default `plugins.call_timeout_ms`.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 200;
/// Default `plugins.max_memory_bytes` (64 MiB).
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 64 << 20;
/// Default `plugins.max_output_bytes` (1 MiB: librdkafka's default
/// `message.max.bytes` is 1000000, so a larger record could not be produced
/// to a Kafka target or the dead-letter topic anyway).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Longest dead-letter reason kept from a plugin, bytes; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 1024;
/// Default `plugins.instances` (instances per plugin; one per worker thread).
pub const DEFAULT_INSTANCES: usize = 2;
/// Default `plugins.rollback_faults`.
pub const DEFAULT_ROLLBACK_FAULTS: u64 = 5;
/// Default `plugins.rollback_window_ms`.
pub const DEFAULT_ROLLBACK_WINDOW_MS: u64 = 60_000;
/// Default `targets[].weight`.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Default `capacity.report_expiry_ms`.
pub const DEFAULT_REPORT_EXPIRY_MS: u64 = 10_000;
/// Default `capacity.failure_cooldown_ms`.
pub const DEFAULT_FAILURE_COOLDOWN_MS: u64 = 2_000;
/// Default `capacity.refresh_interval_ms`.
pub const DEFAULT_REFRESH_INTERVAL_MS: u64 = 100;
/// Default `delivery.timeout_ms`.
pub const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 5_000;
/// Default `delivery.max_batch`.
pub const DEFAULT_DELIVERY_MAX_BATCH: usize = 500;
/// Default `delivery.retry_initial_ms`.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 50;
/// Default `delivery.retry_max_ms`.
pub const DEFAULT_RETRY_MAX_MS: u64 = 2_000;
/// Default `delivery.max_attempts` (attempts at one target before re-routing).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default `delivery.retry_deadline_ms`.
pub const DEFAULT_RETRY_DEADLINE_MS: u64 = 30_000;
/// Default `delivery.lanes` (concurrent requests per HTTP target).
pub const DEFAULT_LANES: usize = 4;
/// Default `delivery.kafka_lanes` (lanes per `kafka://` target).
pub const DEFAULT_KAFKA_LANES: usize = 1;
/// Default `delivery.queue_capacity` (records queued per target).
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Default `pipeline.prefetch_records` (per partition).
pub const DEFAULT_PREFETCH_RECORDS: usize = 16_384;
/// Default `pipeline.max_inflight_records` (per partition).
pub const DEFAULT_MAX_INFLIGHT_RECORDS: usize = 10_000;
/// Default `pipeline.shutdown_grace_ms`.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 15_000;
/// Default `pipeline.revoke_drain_ms`.
pub const DEFAULT_REVOKE_DRAIN_MS: u64 = 10_000;
/// Largest accepted `capacity` (records in flight) for a target.
pub const MAX_CAPACITY: u32 = 10_000_000;
/// Largest `pipeline.max_inflight_records`: the window is a semaphore of
/// this many permits per partition (tokio's limit is 2^61).
pub const MAX_INFLIGHT_RECORDS: usize = 10_000_000;
/// Largest `delivery.queue_capacity`: the queue is a semaphore of this many
/// slots per target (tokio's limit is 2^61).
pub const MAX_QUEUE_CAPACITY: usize = 10_000_000;
/// Smallest `plugins.max_memory_bytes` (1 MiB).
pub const MIN_PLUGIN_MEMORY_BYTES: u64 = 1 << 20;
/// Largest `plugins.max_memory_bytes` (4 GiB): all a 32-bit linear memory
/// can address, and wasmtime's default memory reservation on 64-bit hosts;
/// the pooling allocator refuses a larger cap.
pub const MAX_PLUGIN_MEMORY_BYTES: u64 = 4 << 30;
/// Largest value of any duration setting (`*_ms`) that has no tighter
/// range of its own: 1 day, in ms.
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Default `capacity.health_interval_ms`.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1_000;
/// Range of `capacity.health_interval_ms`: 100 ms to 10 minutes.
pub const HEALTH_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
/// Default `capacity.health_timeout_ms`.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 500;
/// Range of `capacity.health_timeout_ms`: 10 ms to 1 minute.
pub const HEALTH_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=60_000;
/// Default `capacity.remove_after_ms` (5 minutes).
pub const DEFAULT_REMOVE_AFTER_MS: u64 = 300_000;
/// Range of `capacity.remove_after_ms`: 1 second to 1 day (and at least
/// `capacity.report_expiry_ms`).
pub const REMOVE_AFTER_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// Default `capacity.acceptable_heartbeat_pause_ms`: at 200 ms reports a
/// silent server is suspected after ~0.8 s instead of ~0.7 s.
pub const DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE_MS: u64 = 100;
/// Range of `capacity.acceptable_heartbeat_pause_ms`: 0 to 1 minute.
pub const ACCEPTABLE_HEARTBEAT_PAUSE_MS: std::ops::RangeInclusive<u64> = 0..=60_000;
/// Default `capacity.max_reports_per_second` (per target): a report every
/// 50 ms, the fastest rhythm in use, stays under it.
pub const DEFAULT_MAX_REPORTS_PER_SECOND: u32 = 20;
/// Range of `capacity.max_reports_per_second`.
pub const MAX_REPORTS_PER_SECOND: std::ops::RangeInclusive<u32> = 1..=1_000;
/// Default `capacity.max_dynamic_targets`.
pub const DEFAULT_MAX_DYNAMIC_TARGETS: usize = 1_000;
/// Range of `capacity.max_dynamic_targets`.
pub const MAX_DYNAMIC_TARGETS: std::ops::RangeInclusive<usize> = 1..=100_000;
/// Default `capacity.max_joins_per_second` (the whole process).
pub const DEFAULT_MAX_JOINS_PER_SECOND: u32 = 20;
/// Range of `capacity.max_joins_per_second`.
pub const MAX_JOINS_PER_SECOND: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Shortest accepted `targets[].report_token`, characters.
pub const MIN_REPORT_TOKEN_CHARS: usize = 16;

/// `[kafka.options]` keys that name a file librdkafka reads (its
/// CONFIGURATION.md): checked to exist by [`Config::validate`].
pub const KAFKA_FILE_OPTIONS: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
];

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub plugins: PluginRuntimeConfig,
    /// Filter chain, applied in this order (`[[filters]]`, may be empty).
    #[serde(default)]
    pub filters: Vec<PluginConfig>,
    /// The router plugin (`[router]`).
    pub router: PluginConfig,
    /// Application servers (`[[targets]]`).
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub capacity: CapacityConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// Default `telemetry.sample_ratio`.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;

/// `[telemetry]`: traces of records that carry a `traceparent`
/// (`crate::telemetry`). Restart-only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint traces are sent to (JSON bodies): a collector's
    /// address (`http://collector:4318`, `/v1/traces` is added) or the full
    /// traces URL. Unset (the default): no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of the records whose `traceparent` says sampled that CDRS
    /// traces, 0.0..=1.0, by trace id (OpenTelemetry's `TraceIdRatioBased`).
    /// Default 1.0.
    #[serde(default = "d_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans. Default `"cdrs"`.
    #[serde(default = "d_service_name")]
    pub service_name: String,
}

fn d_sample_ratio() -> f64 {
    DEFAULT_SAMPLE_RATIO
}

fn d_service_name() -> String {
    "cdrs".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: DEFAULT_SAMPLE_RATIO,
            service_name: d_service_name(),
        }
    }
}

/// Default `control.status_interval_ms`.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 10_000;

/// Default `control.topic`.
pub const DEFAULT_CONTROL_TOPIC: &str = "cdrs-control";

/// `[control]`: fleet-wide plugin deployments through a Kafka topic
/// (`crate::control`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Whether this process reads the control topic at all. `false`: no
    /// fleet deployments (each process runs its config's plugin files).
    /// Restart-only. Default `true`.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// The control topic: deployments, their artifacts and every
    /// instance's status. Created compacted (one partition) when missing.
    /// Restart-only. Default `"cdrs-control"`.
    #[serde(default = "d_control_topic")]
    pub topic: String,
    /// This process's name in `cdrs plugin status` and `GET /v1/fleet`.
    /// Default `<hostname>-<pid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// How often this process publishes its status, ms, 100..=3600000.
    /// Default 10000.
    #[serde(default = "d_status_interval")]
    pub status_interval_ms: u64,
}

fn d_status_interval() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}

fn d_true() -> bool {
    true
}

fn d_control_topic() -> String {
    DEFAULT_CONTROL_TOPIC.into()
}

impl ControlConfig {
    /// The control topic when fleet deployments are on (`enabled`).
    pub fn topic(&self) -> Option<&str> {
        self.enabled.then_some(self.topic.as_str())
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: true,
            topic: d_control_topic(),
            instance_id: None,
            status_interval_ms: DEFAULT_STATUS_INTERVAL_MS,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Filter directive, e.g. `"info"` or `"cdrs=debug,warn"`. Default
    /// `"info"`. `RUST_LOG` wins at startup; a reload applies this.
    #[serde(default = "d_log_level")]
    pub level: String,
    /// `"text"` (default: a line per event, for a person at a terminal) or
    /// `"json"` (one JSON object per line, for a log collector). Restart
    /// only.
    #[serde(default)]
    pub format: LogFormat,
}

/// `log.format`; defined with the logging it selects.
pub use crate::logging::LogFormat;

fn d_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: d_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// A TLS client block: `[delivery.tls]` (every HTTPS target, health check
/// and dynamic target) and `[targets.tls]` (one target; each key given
/// there replaces the `[delivery.tls]` one). Keys as Vector's `tls`
/// blocks. Files are PEM, relative paths from the config file's folder,
/// watched: a rotated file takes effect for new connections
/// (`docs/security.md`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain, leaf first) for mutual TLS; with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key: PKCS#8, RSA or EC PEM, or an
    /// `ENCRYPTED PRIVATE KEY` opened with `key_pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Passphrase of an encrypted `key_file`. A secret: `${ENV}` or
    /// `file:/path` (see [`Config::parse`]); never shown.
    #[serde(default, skip_serializing)]
    pub key_pass: Option<String>,
    /// Name the server's certificate must be valid for, instead of the
    /// URL's host (the SNI sent stays the URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `false` accepts any server certificate (logged as a warning at every
    /// start): for tests only. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Offer HTTP/2 in the TLS handshake (ALPN); `false`: HTTP/1.1 only.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
}

impl TlsConfig {
    /// `self` with every key `over` sets replaced by `over`'s.
    pub fn overridden_by(&self, over: &TlsConfig) -> TlsConfig {
        TlsConfig {
            ca_file: over.ca_file.clone().or_else(|| self.ca_file.clone()),
            cert_file: over.cert_file.clone().or_else(|| self.cert_file.clone()),
            key_file: over.key_file.clone().or_else(|| self.key_file.clone()),
            key_pass: over.key_pass.clone().or_else(|| self.key_pass.clone()),
            server_name: over
                .server_name
                .clone()
                .or_else(|| self.server_name.clone()),
            verify: over.verify.or(self.verify),
            http2: over.http2.or(self.http2),
        }
    }

    fn files_mut(&mut self) -> [&mut Option<PathBuf>; 3] {
        [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
    }
}

/// `[admin.tls]`: the admin API over HTTPS; with `client_ca_file`, only
/// clients presenting a certificate signed by that CA may connect.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// Server certificate (chain, leaf first), PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM (encrypted: with `key_pass`).
    pub key_file: PathBuf,
    /// Passphrase of an encrypted `key_file`; a secret, never shown.
    #[serde(default, skip_serializing)]
    pub key_pass: Option<String>,
    /// CA whose client certificates are required (mutual TLS). Unset: no
    /// client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// `[kafka]`: where records come from and where dead letters go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `"127.0.0.1:9092"`. Env: `CDRS_KAFKA_BROKERS`.
    pub brokers: String,
    /// Consumer group id. Restart-only.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Topic for dead letters. Default `"cdrs-dead-letter"`.
    #[serde(default = "default_dlq")]
    pub dead_letter_topic: String,
    /// Raw librdkafka settings passed to the consumer and producer as given,
    /// e.g. `"session.timeout.ms" = "6000"`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_dlq() -> String {
    DEFAULT_DEAD_LETTER_TOPIC.into()
}

/// `[admin]`: the HTTP admin API (threat model: `docs/security.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address. Default `"127.0.0.1:9090"`; port 0 picks a free one.
    /// A non-loopback address needs `token`: mutating endpoints are never
    /// open to the network.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token required by mutating endpoints (reload, plugin upload
    /// and rollback, capacity push) and accepted by the read endpoints.
    /// Env: `CDRS_ADMIN_TOKEN`. Unset: mutating endpoints are open, only on
    /// a loopback `listen`, and refuse cross-origin (browser) requests. An
    /// empty token is a config error.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Bearer token for the read endpoints that reveal the deployment
    /// (`/metrics`, `/v1/targets`, `/v1/plugins`, `/v1/config`); `token`
    /// is accepted there too. Env: `CDRS_ADMIN_READ_TOKEN`. Unset: those
    /// endpoints are open. `/healthz` and `/readyz` are always open.
    #[serde(default, skip_serializing)]
    pub read_token: Option<String>,
    /// `Host` header values (host, optionally `:port`) the admin API
    /// answers, against DNS rebinding. Default: for a loopback `listen`,
    /// `localhost`, `127.0.0.1`, `[::1]` and the listen address; for an
    /// unspecified one (`0.0.0.0`, `[::]`), any host; otherwise the listen
    /// address. `/healthz` and `/readyz` answer any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Open admin connections at most; a connection over it is closed at
    /// once (counted in `cdrs_admin_refused_total{reason="connections"}`),
    /// 1..=65536. Default 256.
    #[serde(default = "d_admin_max_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and how
    /// long a kept-alive connection may sit idle before the next request,
    /// ms, 100..=300000 (hyper's `header_read_timeout`). Default 10000.
    #[serde(default = "d_admin_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// Plugin uploads (`PUT /v1/plugins/{name}`) read at once at most; more
    /// get 429, 1..=16. Default 2.
    #[serde(default = "d_admin_uploads")]
    pub max_concurrent_uploads: usize,
    /// How long a key looked up on `/v1/route` is remembered after its last
    /// lookup, for `route.moved` events, ms (1000..=86400000). Default
    /// 600000 (10 min).
    #[serde(default = "d_route_watch_ms")]
    pub route_watch_ms: u64,
    /// Keys remembered at most for `route.moved` events (0..=10,000,000;
    /// 0: none, no `route.moved`); beyond it new keys are not remembered.
    /// Default 100000.
    #[serde(default = "d_route_watch_max_keys")]
    pub route_watch_max_keys: usize,
    /// `[admin.tls]`: serve the admin API over HTTPS. Restart-only (its
    /// files rotate live). Default unset: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<AdminTlsConfig>,
}

/// Default `admin.max_connections`.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// Default `admin.header_read_timeout_ms`.
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default `admin.max_concurrent_uploads`.
pub const DEFAULT_ADMIN_MAX_CONCURRENT_UPLOADS: usize = 2;
/// Default `admin.route_watch_ms`.
pub const DEFAULT_ROUTE_WATCH_MS: u64 = 600_000;
/// Default `admin.route_watch_max_keys`.
pub const DEFAULT_ROUTE_WATCH_MAX_KEYS: usize = 100_000;
fn d_route_watch_ms() -> u64 {
    DEFAULT_ROUTE_WATCH_MS
}
fn d_route_watch_max_keys() -> usize {
    DEFAULT_ROUTE_WATCH_MAX_KEYS
}

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}
fn d_admin_max_connections() -> usize {
    DEFAULT_ADMIN_MAX_CONNECTIONS
}
fn d_admin_header_timeout() -> u64 {
    DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS
}
fn d_admin_uploads() -> usize {
    DEFAULT_ADMIN_MAX_CONCURRENT_UPLOADS
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            read_token: None,
            allowed_hosts: Vec::new(),
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_read_timeout_ms: DEFAULT_ADMIN_HEADER_READ_TIMEOUT_MS,
            max_concurrent_uploads: DEFAULT_ADMIN_MAX_CONCURRENT_UPLOADS,
            route_watch_ms: DEFAULT_ROUTE_WATCH_MS,
            route_watch_max_keys: DEFAULT_ROUTE_WATCH_MAX_KEYS,
            tls: None,
        }
    }
}

impl AdminConfig {
    /// The `Host` values the admin API answers (host or `host:port`,
    /// lower case); `None`: any. See [`AdminConfig::allowed_hosts`].
    pub fn host_allow_list(&self) -> Option<Vec<String>> {
        let mut hosts: Vec<String> = self
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if !hosts.is_empty() {
            return Some(hosts);
        }
        let addr: std::net::SocketAddr = self.listen.parse().ok()?;
        if addr.ip().is_unspecified() {
            return None;
        }
        if addr.ip().is_loopback() {
            hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
        }
        hosts.push(match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        Some(hosts)
    }
}

/// `[pipeline]`: batching.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Records per batch handed to the plugins (1..=65536). Default 256.
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// How long a partition waits to fill a batch short of `batch_size`,
    /// ms, 0..=1000. Default 0: a batch is what the partition's queue holds.
    #[serde(default = "d_linger")]
    pub batch_linger_ms: u64,
    /// Records fetched ahead per partition, waiting for its worker: once a
    /// partition's queue holds this many, librdkafka stops fetching it until
    /// the worker has read below (librdkafka's `queued.min.messages`, which
    /// applies per partition as each partition has its own queue; bytes are
    /// bounded by `queued.max.messages.kbytes`, 16384 KiB per partition
    /// unless `[kafka.options]` sets it). Default 16384.
    #[serde(default = "d_prefetch")]
    pub prefetch_records: usize,
    /// Records of one partition read but not yet finished (delivered,
    /// dropped, dead-lettered) at most: the in-flight window. When it is
    /// full the partition's worker reads no more, so its prefetch fills
    /// and librdkafka stops fetching the partition. At least `batch_size`,
    /// at most 10,000,000. Default 10000.
    #[serde(default = "d_max_inflight")]
    pub max_inflight_records: usize,
    /// On SIGTERM/SIGINT: how long to finish in-flight records before
    /// committing and leaving, ms. Default 15000.
    #[serde(default = "d_grace")]
    pub shutdown_grace_ms: u64,
    /// On partition revoke (rebalance): how long to finish the partition's
    /// in-flight records before committing and letting it go, ms. Keep it
    /// below the group's `max.poll.interval.ms`. Default 10000.
    #[serde(default = "d_revoke_drain")]
    pub revoke_drain_ms: u64,
}

fn d_prefetch() -> usize {
    DEFAULT_PREFETCH_RECORDS
}
fn d_max_inflight() -> usize {
    DEFAULT_MAX_INFLIGHT_RECORDS
}
fn d_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_MS
}
fn d_revoke_drain() -> u64 {
    DEFAULT_REVOKE_DRAIN_MS
}

fn d_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn d_linger() -> u64 {
    DEFAULT_BATCH_LINGER_MS
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            prefetch_records: DEFAULT_PREFETCH_RECORDS,
            max_inflight_records: DEFAULT_MAX_INFLIGHT_RECORDS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            revoke_drain_ms: DEFAULT_REVOKE_DRAIN_MS,
        }
    }
}

/// `[plugins]`: sandbox limits shared by all plugins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRuntimeConfig {
    /// Wall-clock deadline of one plugin call, ms (epoch interruption). Default 200.
    #[serde(default = "d_call_timeout")]
    pub call_timeout_ms: u64,
    /// Linear memory cap per plugin instance, bytes, 1 MiB..=4 GiB
    /// (1048576..=4294967296: 4 GiB is all a 32-bit Wasm memory can address
    /// and what wasmtime's pooling allocator reserves per memory). Default
    /// 64 MiB.
    #[serde(default = "d_max_memory")]
    pub max_memory_bytes: usize,
    /// Largest record a filter may return in a `transform` verdict (key +
    /// value + headers), bytes; a larger one is dead-lettered with the
    /// reason. Default 1 MiB (`max_output_bytes = 1048576`).
    #[serde(default = "d_max_output")]
    pub max_output_bytes: usize,
    /// Instances kept per plugin (parallel calls). Default 2.
    #[serde(default = "d_instances")]
    pub instances: usize,
    /// Folder of compiled plugins, so restarts and swaps back load in
    /// milliseconds. Default, per user: `$XDG_CACHE_HOME/cdrs/plugins`, else
    /// `$HOME/.cache/cdrs/plugins`, else `cdrs-cache-<uid>` in the system
    /// temp folder (only absolute, non-empty variables count). Created mode
    /// 0700; a folder that is a symbolic link, owned by another uid or
    /// writable by group or others is not used (a WARN names it, and
    /// plugins are compiled on every load). Entries are authenticated with
    /// a key kept in the folder (see `plugin::cache`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Record faults (trap, deadline, memory) of a newly swapped-in plugin
    /// version that make CDRS roll back to the previous one. Default 5.
    #[serde(default = "d_rollback_faults")]
    pub rollback_faults: u64,
    /// How long after a swap those faults count, ms. Default 60000.
    #[serde(default = "d_rollback_window")]
    pub rollback_window_ms: u64,
    /// Ed25519 public keys, each the base64 of its 32 bytes, of which one
    /// must have signed a fleet deployment for it to run
    /// (`cdrs plugin deploy --key`). Empty: deployments need no signature.
    /// Default `[]`.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl PluginRuntimeConfig {
    /// The compiled-plugin cache folder: `cache_dir`, else per user
    /// `$XDG_CACHE_HOME/cdrs/plugins`, `$HOME/.cache/cdrs/plugins`, or
    /// `cdrs-cache-<uid>` in the system temp folder (the XDG Base Directory
    /// rule: relative or empty variables are ignored). Whether it is safe to
    /// use is checked when it is opened (`plugin::cache::Cache::open`).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        Some(self.cache_dir.clone().unwrap_or_else(default_cache_dir))
    }
}

/// See [`PluginRuntimeConfig::cache_dir`].
fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("cdrs").join("plugins");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("cdrs").join("plugins");
    }
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("cdrs-cache-{uid}"))
}

fn d_rollback_faults() -> u64 {
    DEFAULT_ROLLBACK_FAULTS
}
fn d_rollback_window() -> u64 {
    DEFAULT_ROLLBACK_WINDOW_MS
}

fn d_call_timeout() -> u64 {
    DEFAULT_CALL_TIMEOUT_MS
}
fn d_max_memory() -> usize {
    DEFAULT_MAX_MEMORY_BYTES
}
fn d_max_output() -> usize {
    DEFAULT_MAX_OUTPUT_BYTES
}
fn d_instances() -> usize {
    DEFAULT_INSTANCES
}

impl Default for PluginRuntimeConfig {
    fn default() -> Self {
        PluginRuntimeConfig {
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            instances: DEFAULT_INSTANCES,
            cache_dir: None,
            rollback_faults: DEFAULT_ROLLBACK_FAULTS,
            rollback_window_ms: DEFAULT_ROLLBACK_WINDOW_MS,
            trusted_keys: Vec::new(),
        }
    }
}

/// One plugin: `[[filters]]` or `[router]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name used in logs, metrics and dead-letter headers.
    pub name: String,
    /// Path of the `.wasm` component, relative to the config file.
    pub path: PathBuf,
    /// Passed to the plugin's `init` as JSON. Default `{}`.
    #[serde(default)]
    pub config: toml::Table,
    /// Expected sha256 (hex) of the file; another file is refused. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `[router.shadow]`: a candidate router run beside this one, its
    /// decisions compared and never used (see [`crate::shadow`]). Only
    /// under `[router]`. Default unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowConfig>>,
}

impl PluginConfig {
    /// The plugin's `config` table as the JSON string given to `init`.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }

    /// The same plugin without its `[router.shadow]`: what decides whether
    /// the live router must be loaded again.
    pub fn without_shadow(&self) -> PluginConfig {
        PluginConfig {
            shadow: None,
            ..self.clone()
        }
    }
}

/// Default `router.shadow.sample_percent`: a tenth of the batches.
pub const DEFAULT_SHADOW_SAMPLE_PERCENT: f64 = 10.0;

/// `[router.shadow]`: a candidate router that sees a sampled share of the
/// live router's batches, with the same target snapshots, off the delivery
/// path. Live: a reload loads, replaces or removes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Name in logs and metrics; not the live router's.
    pub name: String,
    /// Path of the `.wasm` router component, relative to the config file.
    pub path: PathBuf,
    /// Passed to its `init` as JSON. Default `{}`.
    #[serde(default)]
    pub config: toml::Table,
    /// Expected sha256 (hex) of the file. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Share of the live router's batches the shadow also sees, percent
    /// (0 < p <= 100). Default 10.
    #[serde(default = "d_shadow_sample")]
    pub sample_percent: f64,
}

fn d_shadow_sample() -> f64 {
    DEFAULT_SHADOW_SAMPLE_PERCENT
}

impl ShadowConfig {
    /// The shadow as a plugin config (to load it, or to promote it).
    pub fn plugin(&self) -> PluginConfig {
        PluginConfig {
            name: self.name.clone(),
            path: self.path.clone(),
            config: self.config.clone(),
            sha256: self.sha256.clone(),
            shadow: None,
        }
    }
}

/// One application server (`[[targets]]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Unique id, e.g. `"blotter-1"`: `[A-Za-z0-9._-]`, 1..=64 chars.
    pub id: String,
    /// Where records go: `http(s)://host:port/path` (POSTed, see
    /// [`crate::sink::http`]), `kafka://TOPIC` (produced) or `sse://NAME`
    /// (the server-sent-event stream `GET /v1/streams/NAME` of the admin API,
    /// see [`crate::sink::sse`]).
    pub url: String,
    /// Records it can hold in flight until it reports its own (1..=10,000,000).
    pub capacity: u32,
    /// Static weight, multiplies capacity in routing. Default 100.
    #[serde(default = "d_weight")]
    pub weight: u32,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Optional URL for active health checks (`GET`, 2xx = healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    /// Bearer token this server's capacity reports must carry on `PUT
    /// /v1/targets/{id}/capacity`; unset: the admin token (if any) is
    /// required. At least 16 visible ASCII characters (no spaces). Never
    /// serialized (`GET /v1/config` does not show it). Default unset.
    #[serde(default, skip_serializing)]
    pub report_token: Option<String>,
    /// `[targets.tls]`: this target's TLS keys over `[delivery.tls]`'s
    /// (https:// URLs and `health_url`). Default unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

fn d_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl TargetConfig {
    /// A target with the defaults of a `[[targets]]` entry that gives only
    /// `id`, `url` and `capacity` (weight 100, no zone, labels, health
    /// URL, report token or TLS). Not validated: see [`Config::validate`].
    pub fn new(id: impl Into<String>, url: impl Into<String>, capacity: u32) -> TargetConfig {
        TargetConfig {
            id: id.into(),
            url: url.into(),
            capacity,
            weight: DEFAULT_WEIGHT,
            zone: None,
            labels: BTreeMap::new(),
            health_url: None,
            report_token: None,
            tls: None,
        }
    }
}

/// `[capacity]`: the live view of targets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// A target whose last capacity report is older than this is down, ms.
    /// Targets that never reported are judged by deliveries only. Default 10000.
    #[serde(default = "d_expiry")]
    pub report_expiry_ms: u64,
    /// How long a failed delivery keeps a target down, ms. Default 2000.
    #[serde(default = "d_cooldown")]
    pub failure_cooldown_ms: u64,
    /// How old the target snapshot may get, ms, 10..=10000: it is rebuilt
    /// at least this often (in-flight, expiry, phi), and a report that only
    /// moves load figures is published within it rather than at once.
    /// Default 100.
    #[serde(default = "d_refresh")]
    pub refresh_interval_ms: u64,
    /// Topic of capacity reports (JSON heartbeats). Every CDRS process reads
    /// all its partitions outside the consumer group. Unset: HTTP push only.
    /// Restart-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Phi accrual suspicion level over heartbeat arrivals that marks a
    /// target down. Default 8 (Akka, Cassandra).
    #[serde(default = "d_phi")]
    pub phi_threshold: f64,
    /// How far in the future a report's `sent_at_ms` may be, ms. Default 30000.
    #[serde(default = "d_skew")]
    pub max_clock_skew_ms: u64,
    /// URL patterns an unknown server's `endpoint` must match (the whole
    /// URL) for it to join as a target. `*` is the only wildcard and never
    /// crosses a separator: in the host and port it matches one host label,
    /// IPv4 octet or the port (1+ of `[A-Za-z0-9_-]`, never `.`, `:`, `@` or
    /// `/`); in the path, one segment (1+ characters other than `/`, `?`,
    /// `#`). A pattern without a path (`http://10.1.*.*:8080`) allows any
    /// path on the hosts and ports it matches. E.g.
    /// `["http://10.1.*.*:8080/records"]` admits
    /// `http://10.1.2.3:8080/records`, not
    /// `http://10.1.evil.example.com:8080/records`. Default none: no
    /// dynamic targets.
    #[serde(default)]
    pub allow_endpoints: Vec<String>,
    /// A dynamic target silent this long is removed, ms, 1000..=86400000
    /// and at least `report_expiry_ms`. Default 300000.
    #[serde(default = "d_remove_after")]
    pub remove_after_ms: u64,
    /// Slow start: a target that joins or comes back ramps its weight over
    /// this window, ms (Envoy's slow start, aggression 1). 0 = off. Default 10000.
    #[serde(default = "d_slow_start")]
    pub slow_start_ms: u64,
    /// Weight at the start of the ramp, percent. Default 10.
    #[serde(default = "d_slow_start_min")]
    pub slow_start_min_percent: u32,
    /// Active health checks (targets with `health_url`): pause between two
    /// rounds, ms, 100..=600000. Default 1000.
    #[serde(default = "d_health_interval")]
    pub health_interval_ms: u64,
    /// Timeout of one health check, ms, 10..=60000. Default 500.
    #[serde(default = "d_health_timeout")]
    pub health_timeout_ms: u64,
    /// Consecutive failed checks that mark a target down. Default 3.
    #[serde(default = "d_unhealthy_after")]
    pub health_unhealthy_after: u32,
    /// Consecutive passed checks that bring it back. Default 2.
    #[serde(default = "d_healthy_after")]
    pub health_healthy_after: u32,
    /// Silence beyond the learned heartbeat interval that raises no
    /// suspicion yet, ms, 0..=60000: added to the mean before phi is
    /// computed (Akka `acceptable-heartbeat-pause`). Akka's cluster default
    /// is 3 s at its 1 s heartbeats; CDRS's servers report every 200 ms and
    /// its routing wants a silent server out in about a second, so 100
    /// (suspected after ~0.8 s at 200 ms reports, ~0.7 s at 50 ms); 0 is the
    /// plain detector. Default 100.
    #[serde(default = "d_heartbeat_pause")]
    pub acceptable_heartbeat_pause_ms: u64,
    /// Capacity reports accepted per target and second, over both feeds,
    /// 1..=1000; a burst of as many is allowed (GCRA, `governor`). Reports
    /// over it are rejected (`rate_limited`) and touch neither phi nor the
    /// target's state. Default 20 (a report every 50 ms).
    #[serde(default = "d_max_reports_per_second")]
    pub max_reports_per_second: u32,
    /// Dynamic targets (joined through `allow_endpoints`) at most,
    /// 1..=100000; a join beyond it is rejected (`too_many_targets`) until
    /// silent ones are removed (`remove_after_ms`). Default 1000.
    #[serde(default = "d_max_dynamic_targets")]
    pub max_dynamic_targets: usize,
    /// Joins of dynamic targets per second for the whole process,
    /// 1..=10000, with a burst of as many; joins over it are rejected
    /// (`join_rate_limited`) and the server joins with a later report.
    /// Default 20.
    #[serde(default = "d_max_joins_per_second")]
    pub max_joins_per_second: u32,
}

/// Default `capacity.phi_threshold`: Akka's and Cassandra's default
/// suspicion threshold for phi accrual (Hayashibara et al., 2004).
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;

fn d_phi() -> f64 {
    DEFAULT_PHI_THRESHOLD
}
fn d_skew() -> u64 {
    30_000
}
fn d_remove_after() -> u64 {
    DEFAULT_REMOVE_AFTER_MS
}
fn d_slow_start() -> u64 {
    10_000
}
fn d_slow_start_min() -> u32 {
    10
}
fn d_health_interval() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}
fn d_health_timeout() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}
fn d_unhealthy_after() -> u32 {
    3
}
fn d_healthy_after() -> u32 {
    2
}
fn d_heartbeat_pause() -> u64 {
    DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE_MS
}
fn d_max_reports_per_second() -> u32 {
    DEFAULT_MAX_REPORTS_PER_SECOND
}
fn d_max_dynamic_targets() -> usize {
    DEFAULT_MAX_DYNAMIC_TARGETS
}
fn d_max_joins_per_second() -> u32 {
    DEFAULT_MAX_JOINS_PER_SECOND
}

fn d_expiry() -> u64 {
    DEFAULT_REPORT_EXPIRY_MS
}
fn d_cooldown() -> u64 {
    DEFAULT_FAILURE_COOLDOWN_MS
}
fn d_refresh() -> u64 {
    DEFAULT_REFRESH_INTERVAL_MS
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            report_expiry_ms: DEFAULT_REPORT_EXPIRY_MS,
            failure_cooldown_ms: DEFAULT_FAILURE_COOLDOWN_MS,
            refresh_interval_ms: DEFAULT_REFRESH_INTERVAL_MS,
            topic: None,
            phi_threshold: d_phi(),
            max_clock_skew_ms: d_skew(),
            allow_endpoints: Vec::new(),
            remove_after_ms: d_remove_after(),
            slow_start_ms: d_slow_start(),
            slow_start_min_percent: d_slow_start_min(),
            health_interval_ms: d_health_interval(),
            health_timeout_ms: d_health_timeout(),
            health_unhealthy_after: d_unhealthy_after(),
            health_healthy_after: d_healthy_after(),
            acceptable_heartbeat_pause_ms: DEFAULT_ACCEPTABLE_HEARTBEAT_PAUSE_MS,
            max_reports_per_second: DEFAULT_MAX_REPORTS_PER_SECOND,
            max_dynamic_targets: DEFAULT_MAX_DYNAMIC_TARGETS,
            max_joins_per_second: DEFAULT_MAX_JOINS_PER_SECOND,
        }
    }
}

/// `[delivery]`: delivery to targets (HTTP or Kafka sinks), retries,
/// circuit breakers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Timeout of one request (HTTP POST, or Kafka produce ack), ms. Default 5000.
    #[serde(default = "d_delivery_timeout")]
    pub timeout_ms: u64,
    /// Records per request at most. Default 500.
    #[serde(default = "d_delivery_batch")]
    pub max_batch: usize,
    /// First retry delay, ms: exponential backoff (factor 2) with full jitter,
    /// capped by `retry_max_ms` (AWS Architecture Blog, "Exponential Backoff
    /// and Jitter", 2015). Also the first wait when no target can take a
    /// record. Default 50.
    #[serde(default = "d_retry_initial")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms. Default 2000.
    #[serde(default = "d_retry_max")]
    pub retry_max_ms: u64,
    /// Attempts at one target (the first included) before the records are
    /// routed again elsewhere. Default 5.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: u32,
    /// Total time records may spend retrying at one target, ms; a
    /// `Retry-After` beyond it re-routes at once. Default 30000.
    #[serde(default = "d_retry_deadline")]
    pub retry_deadline_ms: u64,
    /// Concurrent requests per HTTP target. Records are spread over lanes by
    /// key hash, so one key always uses one lane and keeps its order. Read
    /// when a target's queue is created. Default 4.
    #[serde(default = "d_lanes")]
    pub lanes: usize,
    /// Lanes per `kafka://` target (1..=64). librdkafka batches and
    /// pipelines produce requests by itself; each lane hands it up to 20,000
    /// records and waits for their acks. Default 1: in `cdrs bench` on Tansu
    /// one lane of 20,000 ran at 293–301k records/s with 1.6–1.8 CPU
    /// seconds per 500,000 records, four lanes of 5,000 at 242–297k with
    /// 2.0–2.4 (README, Performance).
    #[serde(default = "d_kafka_lanes")]
    pub kafka_lanes: usize,
    /// Records queued per target at most (records routed again may exceed
    /// it; they are bounded by the partitions' in-flight windows),
    /// 1..=10,000,000. Default 10000; a `kafka://` target gets at least two lane batches per lane
    /// (2 × `kafka_lanes` × 20000).
    #[serde(default = "d_queue_capacity")]
    pub queue_capacity: usize,
    /// What happens to a record no target can take (all down, open or
    /// ejected): `"wait"` (keep it, retry with backoff; the partition stops
    /// advancing and is no longer read when its window fills) or
    /// `"dead-letter"`.
    /// Default "wait".
    #[serde(default)]
    pub when_no_target: WhenNoTarget,
    /// `"strict"`: while a key has records in flight, its new records follow
    /// them to the same target and lane, whatever the router says, so a later
    /// record never overtakes an earlier one being retried or re-routed.
    /// `"relaxed"`: every record goes where the router says; per-key order
    /// at a target holds except around re-routes (use it with non-sticky
    /// routers whose spread matters more than order). Default "strict".
    #[serde(default)]
    pub key_order: KeyOrder,
    /// `[delivery.breaker]`: circuit breaker and outlier ejection.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// `[delivery.tls]`: TLS of https:// targets, health checks and
    /// dynamic targets. Default: the system's roots, no client certificate.
    #[serde(default, skip_serializing_if = "is_default_tls")]
    pub tls: TlsConfig,
    /// `[delivery.sse]`: replay buffers and subscribers of `sse://` targets.
    #[serde(default)]
    pub sse: SseConfig,
}

/// `[delivery.sse]`: the streams of `sse://NAME` targets (see
/// [`crate::sink::sse`]). Each stream keeps a replay buffer bounded by
/// records, bytes and age, from which subscribers read and resume with
/// `Last-Event-ID` (WHATWG HTML, "Server-sent events").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Events kept per stream for subscribers that resume
    /// (1..=10,000,000). Default 10000.
    #[serde(default = "d_sse_replay_records")]
    pub replay_max_records: usize,
    /// Bytes of event data kept per stream (1 MiB..=16 GiB). Default
    /// 67108864 (64 MiB).
    #[serde(default = "d_sse_replay_bytes")]
    pub replay_max_bytes: u64,
    /// Oldest event kept, ms (1000..=1 day). Default 300000 (5 min).
    #[serde(default = "d_sse_replay_age")]
    pub replay_max_age_ms: u64,
    /// Events a subscriber may fall behind the newest before it is cut
    /// off (told why with an `event: cutoff`, then the response ends);
    /// 1..=`replay_max_records`. Default 5000.
    #[serde(default = "d_sse_max_lag")]
    pub max_subscriber_lag_records: u64,
    /// Subscribers per stream at most (1..=100,000); more are refused with
    /// 503. Default 1000.
    #[serde(default = "d_sse_max_subscribers")]
    pub max_subscribers: usize,
    /// Reconnection delay sent to subscribers as `retry:`, ms
    /// (100..=600000). Default 2000.
    #[serde(default = "d_sse_retry")]
    pub retry_ms: u64,
    /// Longest silence before a keep-alive comment, ms (1000..=60000).
    /// Default 15000 (proxies close idle connections after 30–60 s).
    #[serde(default = "d_sse_keep_alive")]
    pub keep_alive_ms: u64,
}

fn d_sse_replay_records() -> usize {
    10_000
}
fn d_sse_replay_bytes() -> u64 {
    64 << 20
}
fn d_sse_replay_age() -> u64 {
    300_000
}
fn d_sse_max_lag() -> u64 {
    5_000
}
fn d_sse_max_subscribers() -> usize {
    1_000
}
fn d_sse_retry() -> u64 {
    2_000
}
fn d_sse_keep_alive() -> u64 {
    15_000
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            replay_max_records: d_sse_replay_records(),
            replay_max_bytes: d_sse_replay_bytes(),
            replay_max_age_ms: d_sse_replay_age(),
            max_subscriber_lag_records: d_sse_max_lag(),
            max_subscribers: d_sse_max_subscribers(),
            retry_ms: d_sse_retry(),
            keep_alive_ms: d_sse_keep_alive(),
        }
    }
}

impl SseConfig {
    /// Problems of `[delivery.sse]`: (key, message).
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                out.push((
                    format!("delivery.sse.{key}"),
                    format!("{v} is out of range {lo}..={hi}"),
                ));
            }
        };
        range(
            "replay_max_records",
            self.replay_max_records as u64,
            1,
            10_000_000,
        );
        range("replay_max_bytes", self.replay_max_bytes, 1 << 20, 16 << 30);
        range(
            "replay_max_age_ms",
            self.replay_max_age_ms,
            1_000,
            MAX_DURATION_MS,
        );
        range(
            "max_subscriber_lag_records",
            self.max_subscriber_lag_records,
            1,
            self.replay_max_records as u64,
        );
        range("max_subscribers", self.max_subscribers as u64, 1, 100_000);
        range("retry_ms", self.retry_ms, 100, 600_000);
        range("keep_alive_ms", self.keep_alive_ms, 1_000, 60_000);
        out
    }
}

/// The stream name of an `sse://NAME` target URL.
pub fn target_stream(url: &str) -> Option<&str> {
    url.strip_prefix("sse://").map(|t| t.trim_end_matches('/'))
}

fn is_default_tls(t: &TlsConfig) -> bool {
    *t == TlsConfig::default()
}

/// `delivery.key_order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyOrder {
    #[default]
    Strict,
    Relaxed,
}

/// `delivery.when_no_target`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenNoTarget {
    #[default]
    Wait,
    DeadLetter,
}

/// `[delivery.breaker]`: one circuit breaker per target; opening it ejects
/// the target (marks it down) for `base_ejection_ms` × the number of times
/// it was ejected in a row, capped by `max_ejection_ms`. After that a probe
/// request (half-open) decides: success closes it, failure opens it again.
/// Defaults are Envoy's `outlier_detection` defaults
/// (envoyproxy.io, api-v3 cluster/v3/outlier_detection.proto).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open the breaker (Envoy
    /// `consecutive_5xx`). Default 5.
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// Failure share over an interval that opens the breaker, percent
    /// (Envoy `failure_percentage_threshold`). Default 85.
    #[serde(default = "d_failure_percent")]
    pub failure_percent: u32,
    /// Requests needed in an interval before `failure_percent` applies
    /// (Envoy `failure_percentage_request_volume`). Default 50.
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
    /// Length of that interval, ms (Envoy `interval`). Default 10000.
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    /// First ejection time, ms (Envoy `base_ejection_time`). Default 30000.
    #[serde(default = "d_base_ejection")]
    pub base_ejection_ms: u64,
    /// Longest ejection time, ms (Envoy `max_ejection_time`). Default 300000.
    #[serde(default = "d_max_ejection")]
    pub max_ejection_ms: u64,
    /// Share of targets ejected at once at most, percent; at least one may
    /// always be ejected (Envoy `max_ejection_percent`). Default 10.
    #[serde(default = "d_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// No more ejections once fewer than this share of targets would remain,
    /// percent (Envoy's panic threshold). Default 50.
    #[serde(default = "d_panic")]
    pub panic_threshold_percent: u32,
}

fn d_consecutive() -> u32 {
    5
}
fn d_failure_percent() -> u32 {
    85
}
fn d_min_requests() -> u32 {
    50
}
fn d_interval() -> u64 {
    10_000
}
fn d_base_ejection() -> u64 {
    30_000
}
fn d_max_ejection() -> u64 {
    300_000
}
fn d_max_ejection_percent() -> u32 {
    10
}
fn d_panic() -> u32 {
    50
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: d_consecutive(),
            failure_percent: d_failure_percent(),
            min_requests: d_min_requests(),
            interval_ms: d_interval(),
            base_ejection_ms: d_base_ejection(),
            max_ejection_ms: d_max_ejection(),
            max_ejection_percent: d_max_ejection_percent(),
            panic_threshold_percent: d_panic(),
        }
    }
}

fn d_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn d_retry_deadline() -> u64 {
    DEFAULT_RETRY_DEADLINE_MS
}
fn d_lanes() -> usize {
    DEFAULT_LANES
}
fn d_kafka_lanes() -> usize {
    DEFAULT_KAFKA_LANES
}
fn d_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}

fn d_delivery_timeout() -> u64 {
    DEFAULT_DELIVERY_TIMEOUT_MS
}
fn d_delivery_batch() -> usize {
    DEFAULT_DELIVERY_MAX_BATCH
}
fn d_retry_initial() -> u64 {
    DEFAULT_RETRY_INITIAL_MS
}
fn d_retry_max() -> u64 {
    DEFAULT_RETRY_MAX_MS
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout_ms: DEFAULT_DELIVERY_TIMEOUT_MS,
            max_batch: DEFAULT_DELIVERY_MAX_BATCH,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_deadline_ms: DEFAULT_RETRY_DEADLINE_MS,
            lanes: DEFAULT_LANES,
            kafka_lanes: DEFAULT_KAFKA_LANES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            when_no_target: WhenNoTarget::Wait,
            key_order: KeyOrder::Strict,
            breaker: BreakerConfig::default(),
            tls: TlsConfig::default(),
            sse: SseConfig::default(),
        }
    }
}

/// One problem in a config file: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

/// The checks of a client TLS block that need no parsing: a client
/// certificate comes with its key, and every file exists. Whether the
/// files parse and belong together is `crate::tls`'s check.
fn validate_tls(tls: &TlsConfig, block: &str, bad: &mut impl FnMut(String, String)) {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        bad(
            block.into(),
            "cert_file and key_file go together (a client certificate and its key): give both or neither"
                .into(),
        );
    }
    if tls.key_pass.is_some() && tls.key_file.is_none() {
        bad(
            format!("{block}.key_pass"),
            "is set without key_file".into(),
        );
    }
    for (name, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(f) = file {
            file_exists(&format!("{block}.{name}"), f, bad);
        }
    }
    if let Some(name) = &tls.server_name {
        if name.is_empty() || name.contains(['/', ':', ' ']) {
            bad(
                format!("{block}.server_name"),
                format!("{name:?} is not a DNS name or IP address, e.g. \"blotter.internal\""),
            );
        }
    }
}

/// `file` exists and is a readable file; otherwise a problem on `key`.
fn file_exists(key: &str, file: &Path, bad: &mut impl FnMut(String, String)) {
    if let Err(e) = std::fs::File::open(file).and_then(|f| f.metadata()) {
        bad(
            key.into(),
            format!("{:?} cannot be read: {e}", file.display().to_string()),
        );
    } else if !file.is_file() {
        bad(
            key.into(),
            format!("{:?} is not a file", file.display().to_string()),
        );
    }
}

/// An Ed25519 public key given as the base64 of its 32 bytes (e.g.
/// `openssl pkey -in key.pem -pubout -outform DER | tail -c 32 | base64`).
///
/// # Errors
/// Not base64, not 32 bytes, or not a valid curve point.
pub fn trusted_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{text:?} is not base64: {e}"))?;
    let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{text:?} is {} bytes; an Ed25519 public key is 32 (the base64 of the raw key)",
            bytes.len()
        )
    })?;
    ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|e| format!("{text:?} is not an Ed25519 public key: {e}"))
}

/// A secret reference's value (see [`Config::parse`]): `Ok(None)` when
/// `value` is not a reference.
///
/// # Errors
/// The variable is unset, or the file cannot be read or is not UTF-8; the
/// message names the variable or the file, never a secret.
pub fn resolve_secret(value: &str, base: &Path) -> Result<Option<String>, String> {
    if let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        return match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "refers to the environment variable {name:?}, which is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "refers to the environment variable {name:?}, which is not UTF-8"
            )),
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        let path = base.join(path);
        return match std::fs::read_to_string(&path) {
            Ok(mut v) => {
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                Ok(Some(v))
            }
            Err(e) => Err(format!(
                "refers to the file {:?}, which cannot be read: {e}",
                path
            )),
        };
    }
    Ok(None)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} problem(s) in config \"{}\":",
            self.problems.len(),
            self.file
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`. Plugin paths are made
    /// absolute relative to the file's folder.
    ///
    /// Errors: [`ConfigError`] listing every problem (unreadable file, TOML
    /// syntax, unknown or mistyped keys, invalid values).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![ConfigProblem {
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base, &file)
    }

    /// Parses and validates TOML `text`; relative plugin and TLS file paths
    /// are resolved against `base`, secret references (`${ENV}`,
    /// `file:PATH`, see `resolve_secrets`) replaced by the secrets. `file`
    /// names the source in errors.
    pub fn parse(text: &str, base: &Path, file: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            problems: vec![toml_problem(&e)],
        })?;
        config.apply_env();
        let mut problems = config.resolve_secrets(base);
        for p in config
            .filters
            .iter_mut()
            .chain(std::iter::once(&mut config.router))
        {
            if p.path.is_relative() {
                p.path = base.join(&p.path);
            }
        }
        if let Some(shadow) = &mut config.router.shadow {
            if shadow.path.is_relative() {
                shadow.path = base.join(&shadow.path);
            }
        }
        config.resolve_tls_paths(base);
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.into(),
                problems,
            })
        }
    }

    /// Replaces every secret reference by the secret: a value `${NAME}` by
    /// the environment variable `NAME`, a value `file:PATH` by that file's
    /// contents (one trailing newline removed; a relative `PATH` from
    /// `base`). Secrets: `admin.token`, `admin.read_token`,
    /// `targets[].report_token`, every `tls.key_pass`, and every
    /// `[kafka.options]` value (e.g. `sasl.password`). Returns a problem per
    /// reference that cannot be resolved (the secret itself is never in it).
    fn resolve_secrets(&mut self, base: &Path) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut resolve = |key: String, value: &mut String| match resolve_secret(value, base) {
            Ok(Some(secret)) => *value = secret,
            Ok(None) => {}
            Err(message) => out.push(ConfigProblem { key, message }),
        };
        let a = &mut self.admin;
        for (key, v) in [
            ("admin.token", &mut a.token),
            ("admin.read_token", &mut a.read_token),
        ] {
            if let Some(v) = v {
                resolve(key.into(), v);
            }
        }
        if let Some(v) = a.tls.as_mut().and_then(|t| t.key_pass.as_mut()) {
            resolve("admin.tls.key_pass".into(), v);
        }
        if let Some(v) = &mut self.delivery.tls.key_pass {
            resolve("delivery.tls.key_pass".into(), v);
        }
        for (i, t) in self.targets.iter_mut().enumerate() {
            if let Some(v) = &mut t.report_token {
                resolve(format!("targets[{i}].report_token"), v);
            }
            if let Some(v) = t.tls.as_mut().and_then(|t| t.key_pass.as_mut()) {
                resolve(format!("targets[{i}].tls.key_pass"), v);
            }
        }
        for (k, v) in self.kafka.options.iter_mut() {
            resolve(format!("kafka.options.{k:?}"), v);
        }
        out
    }

    /// Makes the TLS file paths absolute relative to `base`.
    fn resolve_tls_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let blocks = std::iter::once(&mut self.delivery.tls)
            .chain(self.targets.iter_mut().filter_map(|t| t.tls.as_mut()));
        for tls in blocks {
            for p in tls.files_mut().into_iter().flatten() {
                join(p);
            }
        }
        if let Some(t) = &mut self.admin.tls {
            join(&mut t.cert_file);
            join(&mut t.key_file);
            if let Some(p) = &mut t.client_ca_file {
                join(p);
            }
        }
    }

    fn apply_env(&mut self) {
        if let Ok(b) = std::env::var("CDRS_KAFKA_BROKERS") {
            self.kafka.brokers = b;
        }
        if let Ok(t) = std::env::var("CDRS_ADMIN_TOKEN") {
            self.admin.token = Some(t);
        }
        if let Ok(t) = std::env::var("CDRS_ADMIN_READ_TOKEN") {
            self.admin.read_token = Some(t);
        }
    }

    /// Checks every value; returns all problems found (empty when valid).
    /// Plugin files are checked to exist here; compiling them is
    /// `cdrs check`'s job.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: String, message: String| out.push(ConfigProblem { key, message });
        self.validate_kafka(&mut bad);
        self.validate_admin(&mut bad);
        self.validate_pipeline(&mut bad);
        self.validate_control(&mut bad);
        self.validate_plugins(&mut bad);
        self.validate_targets(&mut bad);
        self.validate_capacity(&mut bad);
        self.validate_log(&mut bad);
        self.validate_telemetry(&mut bad);
        self.validate_delivery(&mut bad);
        self.validate_durations(&mut bad);
        out
    }

    /// `[kafka]`: brokers, group, topic names, options CDRS sets itself.
    fn validate_kafka(&self, bad: &mut impl FnMut(String, String)) {
        // librdkafka reads these at client creation and names only the
        // setting; say which file is missing before it starts.
        for key in KAFKA_FILE_OPTIONS {
            match self.kafka.options.get(*key).map(String::as_str) {
                // `probe`: librdkafka looks for the system's CA bundle.
                None | Some("probe") => {}
                Some(f) if *key == "ssl.ca.location" && Path::new(f).is_dir() => {}
                Some(f) => file_exists(&format!("kafka.options.{key:?}"), Path::new(f), bad),
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            bad(
                "kafka.brokers".into(),
                "is empty; give host:port[,host:port]".into(),
            );
        }
        if self.kafka.group_id.trim().is_empty() {
            bad(
                "kafka.group_id".into(),
                "is empty; give a consumer group id".into(),
            );
        }
        if self.kafka.topics.is_empty() {
            bad(
                "kafka.topics".into(),
                "is empty; give at least one topic to consume".into(),
            );
        }
        for (i, t) in self.kafka.topics.iter().enumerate() {
            if !valid_topic(t) {
                bad(
                    format!("kafka.topics[{i}]"),
                    format!("{t:?} is not a valid topic name: 1..=249 chars of [A-Za-z0-9._-]"),
                );
            }
            if *t == self.kafka.dead_letter_topic {
                bad(
                    "kafka.dead_letter_topic".into(),
                    format!("{t:?} is also consumed (kafka.topics[{i}]); use a separate topic"),
                );
            }
        }
        if !valid_topic(&self.kafka.dead_letter_topic) {
            bad(
                "kafka.dead_letter_topic".into(),
                format!(
                    "{:?} is not a valid topic name: 1..=249 chars of [A-Za-z0-9._-]",
                    self.kafka.dead_letter_topic
                ),
            );
        }
        for k in ["group.id", "bootstrap.servers", "enable.auto.offset.store"] {
            if self.kafka.options.contains_key(k) {
                bad(
                    format!("kafka.options.\"{k}\""),
                    "is set by CDRS itself; use kafka.brokers / kafka.group_id, or remove it"
                        .into(),
                );
            }
        }
    }

    /// `[pipeline]`: batch size and linger, prefetch and in-flight bounds.
    fn validate_pipeline(&self, bad: &mut impl FnMut(String, String)) {
        if !(1..=65_536).contains(&self.pipeline.batch_size) {
            bad(
                "pipeline.batch_size".into(),
                format!("{} is out of range 1..=65536", self.pipeline.batch_size),
            );
        }
        if self.pipeline.batch_linger_ms > MAX_BATCH_LINGER_MS {
            bad(
                "pipeline.batch_linger_ms".into(),
                format!(
                    "{} is out of range 0..={MAX_BATCH_LINGER_MS}",
                    self.pipeline.batch_linger_ms
                ),
            );
        }
        if !(1..=10_000_000).contains(&self.pipeline.prefetch_records) {
            bad(
                "pipeline.prefetch_records".into(),
                format!(
                    "{} is out of range 1..=10000000",
                    self.pipeline.prefetch_records
                ),
            );
        }
        if self.pipeline.max_inflight_records > MAX_INFLIGHT_RECORDS {
            bad(
                "pipeline.max_inflight_records".into(),
                format!(
                    "{} is out of range 1..={MAX_INFLIGHT_RECORDS} (and at least pipeline.batch_size)",
                    self.pipeline.max_inflight_records
                ),
            );
        } else if self.pipeline.max_inflight_records < self.pipeline.batch_size {
            bad(
                "pipeline.max_inflight_records".into(),
                format!(
                    "{} must be at least pipeline.batch_size ({})",
                    self.pipeline.max_inflight_records, self.pipeline.batch_size
                ),
            );
        }
        // Durations without a tighter range of their own: a day at most, so
        // `now + duration` cannot wrap (a wrapped ejection ends at once).
    }

    /// `[plugins]` limits and every plugin's name and file.
    fn validate_plugins(&self, bad: &mut impl FnMut(String, String)) {
        for (i, k) in self.plugins.trusted_keys.iter().enumerate() {
            if let Err(e) = trusted_key(k) {
                bad(format!("plugins.trusted_keys[{i}]"), e);
            }
        }
        if !(1..=60_000).contains(&self.plugins.call_timeout_ms) {
            bad(
                "plugins.call_timeout_ms".into(),
                format!("{} is out of range 1..=60000", self.plugins.call_timeout_ms),
            );
        }
        if !(MIN_PLUGIN_MEMORY_BYTES..=MAX_PLUGIN_MEMORY_BYTES)
            .contains(&(self.plugins.max_memory_bytes as u64))
        {
            bad(
                "plugins.max_memory_bytes".into(),
                format!(
                    "{} is out of range {MIN_PLUGIN_MEMORY_BYTES}..={MAX_PLUGIN_MEMORY_BYTES} \
                     (1 MiB..=4 GiB, all a plugin's 32-bit memory can address)",
                    self.plugins.max_memory_bytes
                ),
            );
        }
        if self.plugins.max_output_bytes < 1024 {
            bad(
                "plugins.max_output_bytes".into(),
                format!(
                    "{} is below the 1 KiB minimum (1024)",
                    self.plugins.max_output_bytes
                ),
            );
        }
        if !(1..=64).contains(&self.plugins.instances) {
            bad(
                "plugins.instances".into(),
                format!("{} is out of range 1..=64", self.plugins.instances),
            );
        }
        let mut names = HashSet::new();
        let shadow = self.router.shadow.as_ref().map(|s| s.plugin());
        for (i, f) in self.filters.iter().enumerate() {
            if f.shadow.is_some() {
                bad(
                    format!("filters[{i}].shadow"),
                    "only [router] may have a shadow".into(),
                );
            }
        }
        if let Some(s) = &self.router.shadow {
            if !(s.sample_percent > 0.0 && s.sample_percent <= 100.0) {
                bad(
                    "router.shadow.sample_percent".into(),
                    format!(
                        "{} is out of range: more than 0, at most 100",
                        s.sample_percent
                    ),
                );
            }
        }
        let plugins = self
            .filters
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("filters[{i}]"), p))
            .chain(std::iter::once(("router".to_string(), &self.router)))
            .chain(shadow.iter().map(|s| ("router.shadow".to_string(), s)));
        for (key, p) in plugins {
            if !valid_id(&p.name) {
                bad(
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a valid name: 1..=64 chars of [A-Za-z0-9._-]",
                        p.name
                    ),
                );
            } else if !names.insert(p.name.clone()) {
                bad(
                    format!("{key}.name"),
                    format!("{:?} is used by another plugin", p.name),
                );
            }
            if !p.path.is_file() {
                let what = if p.path.is_dir() {
                    "is a folder; name the .wasm file in it"
                } else {
                    "does not exist"
                };
                bad(
                    format!("{key}.path"),
                    format!("plugin file \"{}\" {what}", p.path.display()),
                );
            }
        }
    }

    /// `[[targets]]`: ids, URLs (not the admin API, no loop into a consumed topic), report tokens, health URLs.
    fn validate_targets(&self, bad: &mut impl FnMut(String, String)) {
        if self.targets.is_empty() {
            bad(
                "targets".into(),
                "no [[targets]] given; declare at least one application server".into(),
            );
        }
        let mut ids = HashSet::new();
        let mut streams = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !valid_id(&t.id) {
                bad(
                    format!("targets[{i}].id"),
                    format!(
                        "{:?} is not a valid id: 1..=64 chars of [A-Za-z0-9._-]",
                        t.id
                    ),
                );
            } else if !ids.insert(t.id.clone()) {
                bad(
                    format!("targets[{i}].id"),
                    format!("{:?} is declared twice", t.id),
                );
            }
            let shown = crate::redact::url(&t.url);
            match reqwest::Url::parse(&t.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if self.is_admin_address(&u) {
                        bad(
                            format!("targets[{i}].url"),
                            format!(
                                "{shown:?} points at CDRS's own admin API (admin.listen {}); \
                                 give the app server's address",
                                self.admin.listen
                            ),
                        );
                    }
                }
                Ok(u) if u.scheme() == "kafka" => match target_topic(&t.url)
                {
                    Some(topic) if valid_topic(topic) => {
                        if self.kafka.topics.iter().any(|c| c == topic) {
                            bad(
                                format!("targets[{i}].url"),
                                format!(
                                    "{:?} writes to a topic CDRS consumes (kafka.topics); \
                                     use another topic",
                                    shown
                                ),
                            );
                        }
                        if topic == self.kafka.dead_letter_topic {
                            bad(
                                format!("targets[{i}].url"),
                                format!(
                                    "{shown:?} writes to the dead-letter topic \
                                     (kafka.dead_letter_topic): delivered records would \
                                     pass for dead letters; use another topic"
                                ),
                            );
                        }
                        if self.capacity.topic.as_deref() == Some(topic) {
                            bad(
                                format!("targets[{i}].url"),
                                format!(
                                    "{:?} writes to the capacity report topic (capacity.topic); \
                                     use another topic",
                                    shown
                                ),
                            );
                        }
                    }
                    _ => bad(
                        format!("targets[{i}].url"),
                        format!(
                            "{:?} does not name a valid topic; e.g. \"kafka://blotter-1\"",
                            shown
                        ),
                    ),
                },
                Ok(u) if u.scheme() == "sse" => match target_stream(&t.url) {
                    Some(name) if valid_id(name) => {
                        if !streams.insert(name.to_string()) {
                            bad(
                                format!("targets[{i}].url"),
                                format!(
                                    "{shown:?}: stream {name:?} is served by another target \
                                     already; give each sse:// target its own name"
                                ),
                            );
                        }
                    }
                    _ => bad(
                        format!("targets[{i}].url"),
                        format!(
                            "{shown:?} does not name a valid stream ([A-Za-z0-9._-], \
                             1..=64 chars); e.g. \"sse://blotter\""
                        ),
                    ),
                },
                Ok(u) => bad(
                    format!("targets[{i}].url"),
                    format!(
                        "{:?} has scheme {:?}; valid: http(s)://host:port/path (HTTP sink), kafka://topic (Kafka sink) or sse://name (SSE stream)",
                        shown,
                        u.scheme()
                    ),
                ),
                Err(e) => bad(
                    format!("targets[{i}].url"),
                    format!(
                        "{:?} is not a URL ({e}); e.g. \"http://10.0.0.5:8080/records\"",
                        shown
                    ),
                ),
            }
            if !(1..=MAX_CAPACITY).contains(&t.capacity) {
                bad(
                    format!("targets[{i}].capacity"),
                    format!("{} is out of range 1..={MAX_CAPACITY}", t.capacity),
                );
            }
            if !(1..=10_000).contains(&t.weight) {
                bad(
                    format!("targets[{i}].weight"),
                    format!("{} is out of range 1..=10000", t.weight),
                );
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            // The token itself is never shown.
            if let Some(token) = &t.report_token {
                let chars = token.chars().count();
                if chars < MIN_REPORT_TOKEN_CHARS {
                    bad(
                        format!("targets[{i}].report_token"),
                        format!(
                            "is {chars} characters long; it must have at least \
                             {MIN_REPORT_TOKEN_CHARS} (e.g. `openssl rand -hex 16`)"
                        ),
                    );
                } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    bad(
                        format!("targets[{i}].report_token"),
                        "must be visible ASCII characters only (no spaces): it is sent \
                         in an HTTP header"
                            .into(),
                    );
                }
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Some(h) = &t.health_url {
                if !reqwest::Url::parse(h).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                    bad(
                        format!("targets[{i}].health_url"),
                        format!(
                            "{:?} is not an http:// or https:// URL",
                            crate::redact::url(h)
                        ),
                    );
                }
            }
            if t.health_url.is_some() && t.url.starts_with("sse://") {
                bad(
                    format!("targets[{i}].health_url"),
                    "does not apply to an sse:// target: it is up while a subscriber is \
                     connected to its stream"
                        .into(),
                );
            }
            if let Some(tls) = &t.tls {
                if t.url.starts_with("kafka://") {
                    bad(
                        format!("targets[{i}].tls"),
                        "applies to http(s):// targets; a kafka:// target uses [kafka.options] \
                         (ssl.*, sasl.*)"
                            .into(),
                    );
                }
                if t.url.starts_with("sse://") {
                    bad(
                        format!("targets[{i}].tls"),
                        "applies to http(s):// targets; an sse:// stream is served over the \
                         admin API, with [admin.tls]"
                            .into(),
                    );
                }
                validate_tls(
                    &self.delivery.tls.overridden_by(tls),
                    &format!("targets[{i}].tls"),
                    bad,
                );
            }
        }
    }

    /// `[capacity]`: expiry, refresh, phi accrual, allow-list, topic, limits.
    fn validate_capacity(&self, bad: &mut impl FnMut(String, String)) {
        if self.capacity.report_expiry_ms < 100 {
            bad(
                "capacity.report_expiry_ms".into(),
                format!(
                    "{} is below the 100 ms minimum",
                    self.capacity.report_expiry_ms
                ),
            );
        }
        if !(10..=10_000).contains(&self.capacity.refresh_interval_ms) {
            bad(
                "capacity.refresh_interval_ms".into(),
                format!(
                    "{} is out of range 10..=10000",
                    self.capacity.refresh_interval_ms
                ),
            );
        }
        if !(0.5..=100.0).contains(&self.capacity.phi_threshold) {
            bad(
                "capacity.phi_threshold".into(),
                format!(
                    "{} is out of range 0.5..=100 (8 is the usual choice)",
                    self.capacity.phi_threshold
                ),
            );
        }
        for (i, p) in self.capacity.allow_endpoints.iter().enumerate() {
            if let Err(e) = EndpointPattern::new(p) {
                bad(
                    format!("capacity.allow_endpoints[{i}]"),
                    format!("{p:?} is not a valid pattern: {e}"),
                );
            }
        }
        if let Some(t) = &self.capacity.topic {
            if !valid_topic(t) {
                bad(
                    "capacity.topic".into(),
                    format!("{t:?} is not a valid topic name: 1..=249 chars of [A-Za-z0-9._-]"),
                );
            }
            if let Some(i) = self.kafka.topics.iter().position(|c| c == t) {
                bad(
                    "capacity.topic".into(),
                    format!("{t:?} is also consumed (kafka.topics[{i}]); use a separate topic"),
                );
            }
            if *t == self.kafka.dead_letter_topic {
                bad(
                    "capacity.topic".into(),
                    format!("{t:?} is also kafka.dead_letter_topic; use a separate topic"),
                );
            }
        }
        for (key, v, range) in [
            (
                "capacity.health_interval_ms",
                self.capacity.health_interval_ms,
                HEALTH_INTERVAL_MS,
            ),
            (
                "capacity.health_timeout_ms",
                self.capacity.health_timeout_ms,
                HEALTH_TIMEOUT_MS,
            ),
            (
                "capacity.remove_after_ms",
                self.capacity.remove_after_ms,
                REMOVE_AFTER_MS,
            ),
        ] {
            if !range.contains(&v) {
                bad(
                    key.into(),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                );
            }
        }
        if REMOVE_AFTER_MS.contains(&self.capacity.remove_after_ms)
            && self.capacity.remove_after_ms < self.capacity.report_expiry_ms
        {
            bad(
                "capacity.remove_after_ms".into(),
                format!(
                    "{} must be at least capacity.report_expiry_ms ({})",
                    self.capacity.remove_after_ms, self.capacity.report_expiry_ms
                ),
            );
        }
        if self.capacity.slow_start_min_percent > 100 {
            bad(
                "capacity.slow_start_min_percent".into(),
                format!(
                    "{} is out of range 0..=100",
                    self.capacity.slow_start_min_percent
                ),
            );
        }
        if self.capacity.health_unhealthy_after == 0 || self.capacity.health_healthy_after == 0 {
            bad(
                "capacity.health_unhealthy_after".into(),
                "both health_unhealthy_after and health_healthy_after must be at least 1".into(),
            );
        }
        // Flood limits (reports, joins) and the failure detector's pause.
        let c = &self.capacity;
        if !ACCEPTABLE_HEARTBEAT_PAUSE_MS.contains(&c.acceptable_heartbeat_pause_ms) {
            bad(
                "capacity.acceptable_heartbeat_pause_ms".into(),
                format!(
                    "{} is out of range {}..={}",
                    c.acceptable_heartbeat_pause_ms,
                    ACCEPTABLE_HEARTBEAT_PAUSE_MS.start(),
                    ACCEPTABLE_HEARTBEAT_PAUSE_MS.end()
                ),
            );
        }
        for (key, v, range) in [
            (
                "capacity.max_reports_per_second",
                c.max_reports_per_second,
                MAX_REPORTS_PER_SECOND,
            ),
            (
                "capacity.max_joins_per_second",
                c.max_joins_per_second,
                MAX_JOINS_PER_SECOND,
            ),
        ] {
            if !range.contains(&v) {
                bad(
                    key.into(),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                );
            }
        }
        if !MAX_DYNAMIC_TARGETS.contains(&c.max_dynamic_targets) {
            bad(
                "capacity.max_dynamic_targets".into(),
                format!(
                    "{} is out of range {}..={}",
                    c.max_dynamic_targets,
                    MAX_DYNAMIC_TARGETS.start(),
                    MAX_DYNAMIC_TARGETS.end()
                ),
            );
        }
    }

    /// `[log]`: the level filter.
    fn validate_log(&self, bad: &mut impl FnMut(String, String)) {
        if let Err(e) = crate::logging::validate(&self.log.level) {
            bad(
                "log.level".into(),
                format!(
                    "{:?} is not a filter directive ({e}); e.g. \"info\" or \"cdrs=debug,warn\"",
                    self.log.level
                ),
            );
        }
    }

    /// `[telemetry]`: the endpoint, the ratio, the service name.
    fn validate_telemetry(&self, bad: &mut impl FnMut(String, String)) {
        let t = &self.telemetry;
        if let Some(e) = &t.otlp_endpoint {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => bad(
                    "telemetry.otlp_endpoint".into(),
                    format!(
                        "{:?} is not an http:// or https:// URL; e.g. \"http://127.0.0.1:4318\"",
                        crate::redact::url(e)
                    ),
                ),
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            bad(
                "telemetry.sample_ratio".into(),
                format!("{} is out of range; 0.0..=1.0", t.sample_ratio),
            );
        }
        if t.service_name.trim().is_empty() {
            bad(
                "telemetry.service_name".into(),
                "must not be empty; e.g. \"cdrs\"".into(),
            );
        }
    }

    /// `[delivery]`: timeouts, batches, attempts, lanes, queues, breaker, backoff.
    fn validate_delivery(&self, bad: &mut impl FnMut(String, String)) {
        if self.delivery.timeout_ms == 0 {
            bad("delivery.timeout_ms".into(), "must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.delivery.max_batch) {
            bad(
                "delivery.max_batch".into(),
                format!("{} is out of range 1..=100000", self.delivery.max_batch),
            );
        }
        if self.delivery.max_attempts == 0 {
            bad("delivery.max_attempts".into(), "must be at least 1".into());
        }
        if !(1..=64).contains(&self.delivery.lanes) {
            bad(
                "delivery.lanes".into(),
                format!("{} is out of range 1..=64", self.delivery.lanes),
            );
        }
        if !(1..=64).contains(&self.delivery.kafka_lanes) {
            bad(
                "delivery.kafka_lanes".into(),
                format!("{} is out of range 1..=64", self.delivery.kafka_lanes),
            );
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.delivery.queue_capacity) {
            bad(
                "delivery.queue_capacity".into(),
                format!(
                    "{} is out of range 1..={MAX_QUEUE_CAPACITY}",
                    self.delivery.queue_capacity
                ),
            );
        }
        for (key, message) in self.delivery.sse.problems() {
            bad(key, message);
        }
        let b = &self.delivery.breaker;
        if b.consecutive_failures == 0 {
            bad(
                "delivery.breaker.consecutive_failures".into(),
                "must be at least 1".into(),
            );
        }
        for (key, v) in [
            ("failure_percent", b.failure_percent),
            ("max_ejection_percent", b.max_ejection_percent),
            ("panic_threshold_percent", b.panic_threshold_percent),
        ] {
            if v > 100 {
                bad(
                    format!("delivery.breaker.{key}"),
                    format!("{v} is out of range 0..=100"),
                );
            }
        }
        if b.base_ejection_ms == 0 || b.base_ejection_ms > b.max_ejection_ms {
            bad(
                "delivery.breaker.base_ejection_ms".into(),
                format!(
                    "{} must be at least 1 and at most delivery.breaker.max_ejection_ms ({})",
                    b.base_ejection_ms, b.max_ejection_ms
                ),
            );
        }
        if b.interval_ms == 0 {
            bad(
                "delivery.breaker.interval_ms".into(),
                "must be at least 1".into(),
            );
        }
        // librdkafka's range for `queued.min.messages`.
        if self.delivery.retry_initial_ms == 0
            || self.delivery.retry_initial_ms > self.delivery.retry_max_ms
        {
            bad(
                "delivery.retry_initial_ms".into(),
                format!(
                    "{} must be at least 1 and at most delivery.retry_max_ms ({})",
                    self.delivery.retry_initial_ms, self.delivery.retry_max_ms
                ),
            );
        }
    }

    /// Durations without a tighter range of their own: a day at most.
    fn validate_durations(&self, bad: &mut impl FnMut(String, String)) {
        let d = &self.delivery;
        for (key, v) in [
            (
                "pipeline.shutdown_grace_ms",
                self.pipeline.shutdown_grace_ms,
            ),
            ("pipeline.revoke_drain_ms", self.pipeline.revoke_drain_ms),
            (
                "plugins.rollback_window_ms",
                self.plugins.rollback_window_ms,
            ),
            ("capacity.report_expiry_ms", self.capacity.report_expiry_ms),
            (
                "capacity.failure_cooldown_ms",
                self.capacity.failure_cooldown_ms,
            ),
            (
                "capacity.max_clock_skew_ms",
                self.capacity.max_clock_skew_ms,
            ),
            ("capacity.slow_start_ms", self.capacity.slow_start_ms),
            ("delivery.timeout_ms", d.timeout_ms),
            ("delivery.retry_initial_ms", d.retry_initial_ms),
            ("delivery.retry_max_ms", d.retry_max_ms),
            ("delivery.retry_deadline_ms", d.retry_deadline_ms),
            ("delivery.breaker.interval_ms", d.breaker.interval_ms),
            (
                "delivery.breaker.base_ejection_ms",
                d.breaker.base_ejection_ms,
            ),
            (
                "delivery.breaker.max_ejection_ms",
                d.breaker.max_ejection_ms,
            ),
        ] {
            if v > MAX_DURATION_MS {
                bad(
                    key.into(),
                    format!("{v} is above the maximum of {MAX_DURATION_MS} (1 day, in ms)"),
                );
            }
        }
    }
}

impl Config {
    /// Whether `url` (http) reaches this process's admin API: the same
    /// port as `admin.listen` on its address, or on a loopback address when
    /// the admin listens on loopback or on every address.
    fn is_admin_address(&self, url: &reqwest::Url) -> bool {
        let Ok(admin) = self.admin.listen.parse::<std::net::SocketAddr>() else {
            return false;
        };
        if admin.port() == 0 || url.port_or_known_default() != Some(admin.port()) {
            return false;
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            _ => return false,
        };
        ip == admin.ip()
            || (ip.is_loopback() && (admin.ip().is_loopback() || admin.ip().is_unspecified()))
    }

    /// `[control]`: a topic of its own, a valid instance id and interval.
    fn validate_control(&self, bad: &mut impl FnMut(String, String)) {
        let c = &self.control;
        if let Some(t) = c.topic() {
            if !valid_topic(t) {
                bad(
                    "control.topic".into(),
                    format!("{t:?} is not a valid topic name: 1..=249 chars of [A-Za-z0-9._-]"),
                );
            }
            let k = &self.kafka;
            if k.topics.iter().any(|x| x == t)
                || t == k.dead_letter_topic
                || self.capacity.topic.as_deref() == Some(t)
            {
                bad(
                    "control.topic".into(),
                    format!("{t:?} is also consumed, the dead-letter or the capacity topic; use a topic of its own"),
                );
            }
        }
        if let Some(id) = &c.instance_id {
            if !valid_id(id) {
                bad(
                    "control.instance_id".into(),
                    format!("{id:?} is not a valid id: 1..=64 chars of [A-Za-z0-9._-]"),
                );
            }
        }
        if !(100..=3_600_000).contains(&c.status_interval_ms) {
            bad(
                "control.status_interval_ms".into(),
                format!("{} is out of range 100..=3600000", c.status_interval_ms),
            );
        }
    }

    /// The `[admin]` checks of [`Config::validate`].
    fn validate_admin(&self, bad: &mut impl FnMut(String, String)) {
        let a = &self.admin;
        if let Some(t) = &a.tls {
            file_exists("admin.tls.cert_file", &t.cert_file, bad);
            file_exists("admin.tls.key_file", &t.key_file, bad);
            if let Some(ca) = &t.client_ca_file {
                file_exists("admin.tls.client_ca_file", ca, bad);
            }
        }
        validate_tls(&self.delivery.tls, "delivery.tls", bad);
        match a.listen.parse::<std::net::SocketAddr>() {
            Err(_) => bad(
                "admin.listen".into(),
                format!(
                    "{:?} is not an ip:port address, e.g. \"127.0.0.1:9090\"",
                    a.listen
                ),
            ),
            Ok(addr) if !addr.ip().is_loopback() && a.token.is_none() => bad(
                "admin.token".into(),
                format!(
                    "is required when admin.listen ({}) is not a loopback address: \
                     mutating endpoints (reload, plugin upload, capacity push) would be \
                     open to the network; set it (or CDRS_ADMIN_TOKEN), or listen on 127.0.0.1",
                    a.listen
                ),
            ),
            Ok(_) => {}
        }
        for (key, token) in [
            ("admin.token", &a.token),
            ("admin.read_token", &a.read_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                bad(
                    key.into(),
                    "is empty; give a secret (e.g. 32 random characters), or remove the key".into(),
                );
            }
        }
        for (i, h) in a.allowed_hosts.iter().enumerate() {
            let host_port = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
            if !host_port {
                bad(
                    format!("admin.allowed_hosts[{i}]"),
                    format!(
                        "{h:?} is not a host or host:port (no scheme or path), \
                         e.g. \"cdrs.internal\" or \"10.0.0.7:9090\""
                    ),
                );
            }
        }
        for (key, v, range) in [
            (
                "admin.max_connections",
                a.max_connections as u64,
                1..=65_536,
            ),
            (
                "admin.header_read_timeout_ms",
                a.header_read_timeout_ms,
                100..=300_000,
            ),
            (
                "admin.max_concurrent_uploads",
                a.max_concurrent_uploads as u64,
                1..=16,
            ),
            (
                "admin.route_watch_ms",
                a.route_watch_ms,
                1_000..=MAX_DURATION_MS,
            ),
            (
                "admin.route_watch_max_keys",
                a.route_watch_max_keys as u64,
                0..=10_000_000,
            ),
        ] {
            if !range.contains(&v) {
                bad(
                    key.into(),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                );
            }
        }
    }
}

/// The topic of a `kafka://TOPIC` target URL.
pub fn target_topic(url: &str) -> Option<&str> {
    url.strip_prefix("kafka://")
        .map(|t| t.trim_end_matches('/'))
}

fn toml_problem(e: &toml::de::Error) -> ConfigProblem {
    // toml's message names the key, the line and what was expected.
    ConfigProblem {
        key: "(toml)".into(),
        message: e.to_string().trim().replace('\n', "\n    "),
    }
}

/// A valid target or plugin id: 1..=64 chars of `[A-Za-z0-9._-]`.
pub(crate) fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_topic(s: &str) -> bool {
    (1..=249).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests;
