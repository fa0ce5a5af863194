//! Fleet-wide plugin deployments through a Kafka control topic.
//!
//! Every CDRS process of a consumer group (a fleet) reads every partition of
//! `control.topic` from its beginning, outside the group, as it reads the
//! capacity topic. The topic is compacted and carries three kinds of
//! records, told apart by their key (format: `docs/operations.md`, JSON
//! Schema `docs/control-record.schema.json`):
//!
//! * `artifact/<sha256>/<index>`: one chunk of a component, raw bytes, at
//!   most [`CHUNK_BYTES`] (below the broker's default `message.max.bytes`);
//! * `deployment/<plugin name>`: a [`Deployment`] (JSON): which component
//!   (sha256, size, chunk count) runs as that plugin, with which `init`
//!   config, a label, who and when. Compaction keeps the latest per plugin;
//! * `status/<instance id>`: an [`InstanceStatus`] (JSON) each process
//!   publishes every `control.status_interval_ms` and after each change.
//!
//! Guarantees: on start, a process reads the topic to its end and runs the
//! latest deployment of each of its plugins before it consumes a record
//! ([`Control::start`]); later deployments are applied as they arrive. A
//! deployment is applied as a local swap is (verified against its sha256,
//! compiled off the hot path through the compiled cache, `init`-ed, swapped
//! between batches, rolled back by the slot on a trap storm); one that fails
//! is refused on that process with the reason published in its status, and
//! the running version keeps serving.

use crate::config::{Config, ControlConfig};
use crate::plugin::slot::PluginManager;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes of one artifact chunk at most: half of librdkafka's and Kafka's
/// default `message.max.bytes` (1,000,000 / 1,048,588), leaving room for
/// the key and record overhead.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Version of the record format written in [`Deployment::format`].
pub const FORMAT: u32 = 1;

/// How long a start waits to read the control topic to its end.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// A plugin deployment (`deployment/<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Record format, [`FORMAT`].
    pub format: u32,
    /// The plugin it replaces (`[[filters]] name` or `[router] name`).
    pub name: String,
    /// `filter` or `router`.
    pub world: String,
    /// sha256 of the component, lower-case hex.
    pub sha256: String,
    /// Component size, bytes.
    pub size: u64,
    /// Chunks it was split into (`artifact/<sha256>/0..chunks`).
    pub chunks: u32,
    /// The `init` config (JSON); absent: the plugin's config in each
    /// process's config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// A human version label, e.g. `"v2 sticky by account"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Who deployed it (`user@host` of the CLI).
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The deployment this one replaced, if any: what a starting process
    /// runs when it refuses this one, so it comes back on what the fleet
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// Ed25519 signature (base64) over [`signed_bytes`], required when
    /// `plugins.trusted_keys` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// A canary: only instances whose [`canary_bucket`] is below this
    /// (1..=99) run it; the others keep what they run until it is promoted
    /// (`cdrs plugin promote`). Absent: every instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
    /// Set by a canary instance that rolled it back (the slot's rollback
    /// rule): no other instance takes it, and those that run it go back to
    /// `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
}

/// Why a canary deployment failed, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub instance: String,
    pub reason: String,
    pub at_ms: i64,
}

/// An instance's canary bucket, 0..=99: stable for an instance id (the
/// first 8 bytes of its sha256, modulo 100), so a canary share picks the
/// same instances every time.
pub fn canary_bucket(instance: &str) -> u8 {
    let h = Sha256::digest(instance.as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (n % 100) as u8
}

/// The deployment a [`Deployment`] replaced (its artifact stays on the
/// topic: artifact keys are never overwritten).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    pub sha256: String,
    pub size: u64,
    pub chunks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Deployment {
    /// Whether `instance` runs this deployment: not failed, and in its
    /// canary share if it is a canary.
    pub fn takes(&self, instance: &str) -> bool {
        self.failed.is_none()
            && self
                .canary_percent
                .is_none_or(|p| canary_bucket(instance) < p)
    }

    /// The artifacts it names: its own and the one it replaced (sha256s).
    pub fn artifacts(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.sha256.clone()).chain(self.previous.iter().map(|p| p.sha256.clone()))
    }

    /// `self` as the `previous` of the deployment that replaces it.
    pub fn as_previous(&self) -> Previous {
        Previous {
            sha256: self.sha256.clone(),
            size: self.size,
            chunks: self.chunks,
            config: self.config.clone(),
            label: self.label.clone(),
            signature: self.signature.clone(),
        }
    }

    /// The deployment this one replaced, as a deployment of its own.
    pub fn previous(&self) -> Option<Deployment> {
        let p = self.previous.as_ref()?;
        Some(Deployment {
            sha256: p.sha256.clone(),
            size: p.size,
            chunks: p.chunks,
            config: p.config.clone(),
            label: p.label.clone(),
            signature: p.signature.clone(),
            previous: None,
            canary_percent: None,
            failed: None,
            ..self.clone()
        })
    }
}

/// What one process runs (`status/<instance>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// When it was published, ms since the Unix epoch.
    pub at_ms: i64,
    pub plugins: Vec<PluginState>,
}

/// One plugin of an [`InstanceStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginState {
    pub name: String,
    /// `filter` or `router`.
    pub kind: String,
    /// sha256 of the running component.
    pub version: String,
    /// The deployment label of the running version, if it was deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// How it arrived: config | file | upload | deployment | rollback.
    pub source: String,
    /// When it was loaded, ms since the Unix epoch.
    pub since_ms: i64,
    /// Record faults (traps, deadlines, memory) of the running version.
    pub faults: u64,
    /// The last deployment this process refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// A deployment a process refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub reason: String,
    pub at_ms: i64,
}

/// One record of the control topic, by its key.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRecord {
    Chunk {
        sha256: String,
        index: u32,
        bytes: Vec<u8>,
    },
    Deployment(Box<Deployment>),
    Status(InstanceStatus),
    /// A null value: a key deleted by compaction's rules.
    Tombstone(String),
}

/// Reads one record of the control topic.
///
/// # Errors
/// An unknown key, a malformed chunk key, or a value that is not the JSON
/// its key names (the reason names the key).
pub fn parse(key: &[u8], value: Option<&[u8]>) -> Result<ControlRecord, String> {
    let key = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8".to_string())?;
    let Some(value) = value else {
        return Ok(ControlRecord::Tombstone(key.into()));
    };
    let json = |what: &str| format!("{key:?}: not a {what} record");
    if let Some(rest) = key.strip_prefix("artifact/") {
        let (sha256, index) = rest
            .split_once('/')
            .ok_or_else(|| format!("{key:?}: expected artifact/<sha256>/<index>"))?;
        let index = index
            .parse()
            .map_err(|_| format!("{key:?}: chunk index is not a number"))?;
        return Ok(ControlRecord::Chunk {
            sha256: sha256.into(),
            index,
            bytes: value.to_vec(),
        });
    }
    if let Some(name) = key.strip_prefix("deployment/") {
        let d: Deployment =
            serde_json::from_slice(value).map_err(|e| format!("{}: {e}", json("deployment")))?;
        if d.name != name {
            return Err(format!("{key:?}: names plugin {:?}", d.name));
        }
        if d.format != FORMAT {
            return Err(format!(
                "{key:?}: record format {} (this CDRS reads {FORMAT})",
                d.format
            ));
        }
        return Ok(ControlRecord::Deployment(Box::new(d)));
    }
    if key.starts_with("status/") {
        let s: InstanceStatus =
            serde_json::from_slice(value).map_err(|e| format!("{}: {e}", json("status")))?;
        return Ok(ControlRecord::Status(s));
    }
    Err(format!(
        "{key:?}: unknown key (artifact/, deployment/ or status/)"
    ))
}

/// The records that deploy `bytes` as plugin `name` (chunks first, then
/// the deployment record): (key, value) pairs, in produce order.
/// `replaces`: the plugin's latest deployment on the topic, if any.
pub fn deployment_records(
    name: &str,
    world: &str,
    bytes: &[u8],
    config: Option<serde_json::Value>,
    label: Option<String>,
    by: &str,
    replaces: Option<&Deployment>,
) -> (Deployment, Vec<(String, Vec<u8>)>) {
    let sha256 = hex::encode(Sha256::digest(bytes));
    let mut out: Vec<(String, Vec<u8>)> = bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| (format!("artifact/{sha256}/{i}"), c.to_vec()))
        .collect();
    let d = Deployment {
        format: FORMAT,
        name: name.into(),
        world: world.into(),
        sha256,
        size: bytes.len() as u64,
        chunks: out.len() as u32,
        config,
        label,
        by: by.into(),
        at_ms: now_ms(),
        previous: replaces.map(Deployment::as_previous),
        signature: None,
        canary_percent: None,
        failed: None,
    };
    out.push((
        format!("deployment/{name}"),
        serde_json::to_vec(&d).expect("a deployment serializes"),
    ));
    (d, out)
}

/// The chunk keys (`artifact/<sha256>/<i>`) that deployment `new` leaves
/// unreferenced on a topic that held `before`: those of the artifacts the
/// deployment of `new.name` it replaces named (its own and the one it
/// replaced) that no deployment names any more. A deployer writes
/// tombstones for them, so a compacted topic lets old components go and
/// a starting process does not read them.
pub fn retired_chunks(before: &FleetView, new: &Deployment) -> Vec<String> {
    let Some(old) = before.deployments.get(&new.name) else {
        return Vec::new();
    };
    let mut kept: std::collections::HashSet<String> = before
        .deployments
        .values()
        .filter(|d| d.name != new.name)
        .flat_map(Deployment::artifacts)
        .chain(new.artifacts())
        .collect();
    let mut out = Vec::new();
    let candidates = std::iter::once((&old.sha256, old.chunks))
        .chain(old.previous.iter().map(|p| (&p.sha256, p.chunks)));
    for (sha, chunks) in candidates {
        if kept.insert(sha.clone()) {
            out.extend((0..chunks).map(|i| format!("artifact/{sha}/{i}")));
        }
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a deployment's signature covers: what runs and how it starts (the
/// plugin, its world, the component's sha256 and the `init` config as
/// compact JSON with sorted keys), not the label or who and when.
pub fn signed_bytes(d: &Deployment) -> Vec<u8> {
    let config = d.config.as_ref().map(|c| c.to_string()).unwrap_or_default();
    format!(
        "cdrs-deployment-v1\n{}\n{}\n{}\n{config}",
        d.name, d.world, d.sha256
    )
    .into_bytes()
}

/// Signs `d` with `key`.
pub fn sign(d: &mut Deployment, key: &ed25519_dalek::SigningKey) {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let sig = key.sign(&signed_bytes(d));
    d.signature = Some(base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()));
}

/// Checks `d`'s signature against `trusted` (none: nothing to check).
///
/// # Errors
/// Unsigned, malformed, or signed by no trusted key.
pub fn verify(d: &Deployment, trusted: &[ed25519_dalek::VerifyingKey]) -> Result<(), String> {
    use base64::Engine as _;
    if trusted.is_empty() {
        return Ok(());
    }
    let Some(sig) = &d.signature else {
        return Err("unsigned: plugins.trusted_keys requires a signed deployment (cdrs plugin deploy --key)".into());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .map_err(|_| "the signature is not base64".to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&bytes)
        .map_err(|_| "the signature is not 64 bytes".to_string())?;
    let msg = signed_bytes(d);
    if trusted.iter().any(|k| k.verify_strict(&msg, &sig).is_ok()) {
        Ok(())
    } else {
        Err("the signature does not verify with any of plugins.trusted_keys".into())
    }
}

/// Bytes of chunks an [`Assembler`] holds at most by default (512 MiB,
/// some 25 Python components): past it, the chunks of artifacts no
/// deployment waits for are let go, oldest first, so records written to
/// the control topic by mistake cannot grow a process without bound.
pub const MAX_BUFFERED_BYTES: usize = 512 * 1024 * 1024;

/// Collects chunks and deployments until a deployment's component is whole.
pub struct Assembler {
    chunks: HashMap<String, BTreeMap<u32, Vec<u8>>>,
    /// The latest deployment per plugin whose chunks are not all here.
    waiting: BTreeMap<String, Deployment>,
    /// When set, chunks of other artifacts are not kept.
    keep: Option<std::collections::HashSet<String>>,
    /// Bytes in `chunks`, and the artifacts in the order their first chunk came.
    bytes: usize,
    order: std::collections::VecDeque<String>,
    limit: usize,
}

impl Default for Assembler {
    fn default() -> Self {
        Assembler::with_limit(MAX_BUFFERED_BYTES)
    }
}

impl Assembler {
    /// An assembler that keeps only the chunks of the artifacts `keep`.
    pub fn keeping(keep: std::collections::HashSet<String>) -> Assembler {
        Assembler {
            keep: Some(keep),
            ..Assembler::default()
        }
    }

    /// An assembler that holds at most `limit` bytes of chunks of
    /// artifacts no deployment waits for.
    pub fn with_limit(limit: usize) -> Assembler {
        Assembler {
            chunks: HashMap::new(),
            waiting: BTreeMap::new(),
            keep: None,
            bytes: 0,
            order: Default::default(),
            limit,
        }
    }

    /// Lets go of the oldest artifacts no deployment waits for until the
    /// chunks fit `limit`.
    fn shed(&mut self) {
        while self.bytes > self.limit {
            let waited = |sha: &String| self.waiting.values().any(|d| &d.sha256 == sha);
            let Some(pos) = self.order.iter().position(|sha| !waited(sha)) else {
                return;
            };
            let sha = self.order.remove(pos).expect("a position in order");
            tracing::warn!(artifact = %sha, limit_bytes = self.limit,
                "control topic: chunks of an artifact no deployment names let go (too many buffered)");
            self.forget(&sha);
        }
    }

    /// The component of `d`, when all its chunks are here: checked
    /// against its size and sha256.
    pub fn artifact(&self, d: &Deployment) -> Option<Result<Vec<u8>, String>> {
        let have = self.chunks.get(&d.sha256)?;
        if (0..d.chunks).any(|i| !have.contains_key(&i)) {
            return None;
        }
        let bytes: Vec<u8> = (0..d.chunks)
            .flat_map(|i| have[&i].iter().copied())
            .collect();
        let got = hex::encode(Sha256::digest(&bytes));
        Some(if bytes.len() as u64 != d.size {
            Err(format!(
                "the artifact is {} bytes, the deployment says {}",
                bytes.len(),
                d.size
            ))
        } else if got != d.sha256 {
            Err(format!(
                "the artifact's sha256 is {got}, the deployment says {}",
                d.sha256
            ))
        } else {
            Ok(bytes)
        })
    }

    /// Whether any chunk of artifact `sha256` is here.
    pub fn has_chunks(&self, sha256: &str) -> bool {
        self.chunks.contains_key(sha256)
    }

    /// Stops waiting for plugin `name`'s deployment.
    pub fn give_up(&mut self, name: &str) -> Option<Deployment> {
        self.waiting.remove(name)
    }

    /// Forgets the chunks of artifact `sha256`.
    pub fn forget(&mut self, sha256: &str) {
        if let Some(c) = self.chunks.remove(sha256) {
            self.bytes -= c.values().map(Vec::len).sum::<usize>();
        }
        self.order.retain(|s| s != sha256);
    }

    /// Takes one record; returns the deployments it completed, each with
    /// its component's bytes (checked against size and sha256), or the
    /// reason a completed one cannot be used.
    pub fn take(&mut self, record: ControlRecord) -> Vec<(Deployment, Result<Vec<u8>, String>)> {
        match record {
            ControlRecord::Chunk {
                sha256,
                index,
                bytes,
            } => {
                if self.keep.as_ref().is_some_and(|k| !k.contains(&sha256)) {
                    return Vec::new();
                }
                let entry = self.chunks.entry(sha256.clone()).or_insert_with(|| {
                    self.order.push_back(sha256.clone());
                    BTreeMap::new()
                });
                self.bytes += bytes.len();
                if let Some(old) = entry.insert(index, bytes) {
                    self.bytes -= old.len();
                }
                self.shed();
                let ready: Vec<String> = self
                    .waiting
                    .iter()
                    .filter(|(_, d)| d.sha256 == sha256)
                    .map(|(n, _)| n.clone())
                    .collect();
                ready
                    .into_iter()
                    .filter_map(|n| self.complete(&n))
                    .collect()
            }
            ControlRecord::Deployment(d) => {
                let name = d.name.clone();
                self.waiting.insert(name.clone(), *d);
                self.complete(&name).into_iter().collect()
            }
            ControlRecord::Status(_) | ControlRecord::Tombstone(_) => Vec::new(),
        }
    }

    /// The deployments whose chunks have not all arrived.
    pub fn waiting(&self) -> impl Iterator<Item = &Deployment> {
        self.waiting.values()
    }

    fn complete(&mut self, name: &str) -> Option<(Deployment, Result<Vec<u8>, String>)> {
        let r = self.artifact(self.waiting.get(name)?)?;
        let d = self.waiting.remove(name)?;
        Some((d, r))
    }
}

/// What `GET /v1/fleet` and `cdrs plugin status` show: the latest
/// deployment of each plugin and every instance's last status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetView {
    pub deployments: BTreeMap<String, Deployment>,
    pub instances: BTreeMap<String, InstanceStatus>,
}

impl FleetView {
    /// The deployment of `name` the fleet last ran: the latest, when some
    /// instance runs it or none has published a status; otherwise the one
    /// the latest replaced (which was chosen the same way). What a new
    /// deployment replaces, and what a rollback returns to.
    pub fn last_ran(&self, name: &str) -> Option<Deployment> {
        let latest = self.deployments.get(name)?;
        let runs = |sha: &str| {
            self.instances
                .values()
                .any(|i| i.plugins.iter().any(|p| p.name == name && p.version == sha))
        };
        if self.instances.is_empty() || runs(&latest.sha256) {
            Some(latest.clone())
        } else {
            latest.previous()
        }
    }

    /// Folds one record in (deployments and statuses; chunks are ignored).
    pub fn take(&mut self, record: &ControlRecord) {
        match record {
            ControlRecord::Deployment(d) => {
                self.deployments.insert(d.name.clone(), (**d).clone());
            }
            ControlRecord::Status(s) => {
                self.instances.insert(s.instance.clone(), s.clone());
            }
            ControlRecord::Chunk { .. } | ControlRecord::Tombstone(_) => {}
        }
    }
}

/// A consumer assigned to every partition of `topic` from its beginning,
/// outside any group, and each partition's end when it was assigned.
///
/// # Errors
/// The consumer cannot be created, or the topic's metadata or watermarks
/// cannot be read.
pub fn reader(config: &Config, topic: &str) -> anyhow::Result<(StreamConsumer, Vec<(i32, i64)>)> {
    let group = format!("cdrs-control-{}", std::process::id());
    let consumer: StreamConsumer =
        crate::kafka::reader_config(&config.kafka.brokers, &config.kafka.options, &group)
            .create()?;
    let partitions = crate::kafka::partition_count(&consumer, topic, "control")?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.push((p, high));
    }
    consumer.assign(&tpl)?;
    Ok((consumer, ends))
}

/// Reads `consumer` until every partition reached its end in `ends`,
/// passing each record to `each`; bad records are logged and skipped.
///
/// # Errors
/// The end was not reached within `timeout`.
pub async fn catch_up(
    consumer: &StreamConsumer,
    ends: &[(i32, i64)],
    timeout: Duration,
    mut each: impl FnMut(ControlRecord),
) -> anyhow::Result<()> {
    let mut next: HashMap<i32, i64> = ends.iter().map(|(p, _)| (*p, 0)).collect();
    let done = |next: &HashMap<i32, i64>| ends.iter().all(|(p, end)| next[p] >= *end);
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&next) {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the control topic was not read to its end within {timeout:?}")
            })?;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "control topic read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next.insert(m.partition(), m.offset() + 1);
        match parse(m.key().unwrap_or_default(), m.payload()) {
            Ok(r) => each(r),
            Err(e) => tracing::warn!(offset = m.offset(), error = %e, "control record skipped"),
        }
    }
    Ok(())
}

/// The fleet as the control topic says now: read to its end (artifact
/// chunks skipped).
///
/// # Errors
/// As [`reader`] and [`catch_up`].
pub async fn read_fleet(config: &Config, topic: &str) -> anyhow::Result<FleetView> {
    let (consumer, ends) = reader(config, topic)?;
    let mut view = FleetView::default();
    catch_up(&consumer, &ends, CATCH_UP_TIMEOUT, |r| view.take(&r)).await?;
    Ok(view)
}

/// This process's side of the fleet: applies deployments to its plugins
/// and publishes its status.
pub struct Control {
    pub instance: String,
    topic: String,
    plugins: Arc<PluginManager>,
    producer: FutureProducer,
    fleet: Mutex<FleetView>,
    /// The label of each plugin's deployed version (name → (sha256, label)).
    deployed: Mutex<BTreeMap<String, (String, Option<String>)>>,
    refused: Mutex<BTreeMap<String, Refusal>>,
    status_interval: Duration,
    /// Chunks read at start that no deployment named yet, handed to
    /// [`Control::run`].
    pending: Mutex<Assembler>,
    /// For readers of the topic after the start (a rollback's artifact).
    config: Config,
    /// `plugins.trusted_keys`, parsed.
    trusted: Vec<ed25519_dalek::VerifyingKey>,
    /// Canary deployments this instance runs, by plugin, until promoted or
    /// failed: watched for the slot's rollback.
    canaries: Mutex<BTreeMap<String, Deployment>>,
}

impl Control {
    /// Creates the control topic if it is missing (compacted, one
    /// partition), reads it to its end, runs the latest deployment of each
    /// of this process's plugins, and publishes its status. Returns the
    /// control and the reader to pass to [`Control::run`].
    ///
    /// # Errors
    /// The topic cannot be created or read to its end within
    /// [`CATCH_UP_TIMEOUT`], or the status producer cannot be created.
    /// A deployment that cannot be applied is not an error (refused, see
    /// the status).
    pub async fn start(
        config: &Config,
        plugins: Arc<PluginManager>,
    ) -> anyhow::Result<(Arc<Control>, StreamConsumer)> {
        let c = &config.control;
        let topic = c.topic.clone();
        ensure_topic(config, &topic).await?;
        // Pass 1: deployments and statuses (chunks are skipped), to learn
        // which artifacts this process needs.
        let fleet = read_fleet(config, &topic).await?;
        let mine: Vec<&Deployment> = fleet
            .deployments
            .values()
            .filter(|d| plugins.has(&d.name))
            .collect();
        let referenced: std::collections::HashSet<String> = fleet
            .deployments
            .values()
            .flat_map(Deployment::artifacts)
            .collect();
        let mut keep: std::collections::HashSet<String> =
            mine.iter().flat_map(|d| d.artifacts()).collect();
        // Pass 2: the chunks of those artifacts, and of any artifact no
        // deployment names yet (a deployment being written right now).
        let (consumer, ends) = reader(config, &topic)?;
        let mut orphans = Assembler::default();
        let mut needed = Assembler::keeping(std::mem::take(&mut keep));
        catch_up(&consumer, &ends, CATCH_UP_TIMEOUT, |r| {
            if let ControlRecord::Chunk { sha256, .. } = &r {
                if !referenced.contains(sha256) {
                    orphans.take(r);
                    return;
                }
            }
            needed.take(r);
        })
        .await?;
        let control = Arc::new(Control {
            instance: instance_id(c),
            topic,
            plugins,
            producer: crate::kafka::producer_config(&config.kafka.brokers, &config.kafka.options)
                .create()?,
            fleet: Mutex::new(fleet.clone()),
            deployed: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            status_interval: Duration::from_millis(c.status_interval_ms),
            pending: Mutex::new(orphans),
            config: config.clone(),
            trusted: config
                .plugins
                .trusted_keys
                .iter()
                .filter_map(|k| crate::config::trusted_key(k).ok())
                .collect(),
            canaries: Mutex::new(BTreeMap::new()),
        });
        // The latest deployment of each plugin; refused here, the one it
        // replaced, so a restart comes back on what the fleet runs.
        for d in fleet
            .deployments
            .values()
            .filter(|d| control.plugins.has(&d.name))
        {
            let taken = d.takes(&control.instance);
            if taken {
                let Some(bytes) = needed.artifact(d) else {
                    tracing::warn!(plugin = %d.name, version = %d.sha256,
                        "the latest deployment's artifact is incomplete on the control topic; keeping the config's version");
                    continue;
                };
                if control.clone().apply(d.clone(), bytes).await {
                    continue;
                }
            }
            if let Some(p) = d.previous() {
                if let Some(bytes) = needed.artifact(&p) {
                    tracing::info!(plugin = %d.name, version = %p.sha256,
                        "running the deployment the latest one replaced (refused, failed, or a canary of other instances)");
                    control.clone().apply(p, bytes).await;
                }
            }
        }
        control.publish().await;
        tracing::info!(topic = %control.topic, instance = %control.instance, "fleet control topic read");
        Ok((control, consumer))
    }

    /// Applies deployments as they arrive and publishes the status every
    /// `control.status_interval_ms`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        consumer: StreamConsumer,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut assembler = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        let mut tick = tokio::time::interval(self.status_interval);
        tick.tick().await;
        loop {
            let m = tokio::select! {
                m = consumer.recv() => m,
                _ = tick.tick() => {
                    self.check_canaries().await;
                    self.publish().await;
                    continue;
                }
                _ = shutdown.changed() => return,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "control topic read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let record = match parse(m.key().unwrap_or_default(), m.payload()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(offset = m.offset(), error = %e, "control record skipped");
                    continue;
                }
            };
            self.fleet.lock().expect("fleet lock").take(&record);
            for (d, bytes) in assembler.take(record) {
                assembler.forget(&d.sha256);
                self.clone().arrived(d, bytes).await;
            }
            // A deployment of an artifact written long ago (a rollback):
            // its chunks were read, and let go, before; read them again.
            let old: Vec<Deployment> = assembler
                .waiting()
                .filter(|d| !assembler.has_chunks(&d.sha256))
                .cloned()
                .collect();
            for d in old {
                match self.reread(&d).await {
                    Ok(Some(bytes)) => {
                        assembler.give_up(&d.name);
                        self.clone().arrived(d, bytes).await;
                    }
                    // Not on the topic (yet): its chunks may still come.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(plugin = %d.name, error = %e, "control topic re-read failed")
                    }
                }
            }
        }
    }

    /// A deployment read live: run it if this instance takes it; if it
    /// failed on a canary and runs here, go back to what it replaced.
    async fn arrived(self: Arc<Self>, d: Deployment, bytes: Result<Vec<u8>, String>) {
        let running = self
            .plugins
            .status()
            .into_iter()
            .find(|p| p.name == d.name)
            .map(|p| p.version);
        if d.takes(&self.instance) {
            let canary = d.canary_percent.is_some();
            if self.clone().apply(d.clone(), bytes).await && canary {
                self.canaries
                    .lock()
                    .expect("canaries lock")
                    .insert(d.name.clone(), d);
            } else {
                self.canaries.lock().expect("canaries lock").remove(&d.name);
            }
        } else if d.failed.is_some() && running.as_deref() == Some(d.sha256.as_str()) {
            self.canaries.lock().expect("canaries lock").remove(&d.name);
            if let Some(p) = d.previous() {
                match self.reread(&p).await {
                    Ok(Some(bytes)) => {
                        tracing::warn!(plugin = %d.name, version = %p.sha256,
                            "the deployment failed on a canary: going back to what it replaced");
                        self.clone().apply(p, bytes).await;
                    }
                    Ok(None) => {
                        tracing::error!(plugin = %d.name, "the replaced version's artifact is not on the control topic")
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %d.name, error = %e, "control topic re-read failed")
                    }
                }
            }
        } else {
            tracing::info!(plugin = %d.name, version = &d.sha256[..12.min(d.sha256.len())],
                canary = ?d.canary_percent, failed = d.failed.is_some(),
                "deployment not taken by this instance");
        }
        self.publish().await;
    }

    /// A canary this instance runs that its slot rolled back (trap storm):
    /// the deployment is marked failed on the topic, for the whole fleet.
    async fn check_canaries(&self) {
        let watched: Vec<Deployment> = self
            .canaries
            .lock()
            .expect("canaries lock")
            .values()
            .cloned()
            .collect();
        for d in watched {
            let Some(now) = self.plugins.status().into_iter().find(|p| p.name == d.name) else {
                continue;
            };
            if now.version == d.sha256 || now.source != "rollback" {
                continue;
            }
            let reason = now
                .last_event
                .unwrap_or_else(|| "rolled back by its slot".into());
            let failed = Deployment {
                failed: Some(Failure {
                    instance: self.instance.clone(),
                    reason: reason.clone(),
                    at_ms: now_ms(),
                }),
                ..d.clone()
            };
            let key = format!("deployment/{}", d.name);
            let value = serde_json::to_vec(&failed).expect("a deployment serializes");
            let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
            match self.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    tracing::error!(plugin = %d.name, version = %d.sha256, reason = %reason,
                        "canary deployment rolled back here: marked failed for the fleet");
                    self.canaries.lock().expect("canaries lock").remove(&d.name);
                    // The slot is back on what the canary replaced.
                    let mut deployed = self.deployed.lock().expect("deployed lock");
                    match &d.previous {
                        Some(p) if p.sha256 == now.version => {
                            deployed.insert(d.name.clone(), (p.sha256.clone(), p.label.clone()));
                        }
                        _ => {
                            deployed.remove(&d.name);
                        }
                    }
                }
                Err((e, _)) => tracing::warn!(error = %e, "canary failure not published; retrying"),
            }
        }
    }

    /// The artifact of `d`, read again from the topic's beginning (only its
    /// chunks are kept); `None` when not all of them are there.
    async fn reread(&self, d: &Deployment) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        let (consumer, ends) = reader(&self.config, &self.topic)?;
        let mut a = Assembler::keeping(std::iter::once(d.sha256.clone()).collect());
        catch_up(&consumer, &ends, CATCH_UP_TIMEOUT, |r| {
            if matches!(r, ControlRecord::Chunk { .. }) {
                a.take(r);
            }
        })
        .await?;
        Ok(a.artifact(d))
    }

    /// Runs `d` as its plugin (off the async threads), or records why not.
    /// Returns whether it runs.
    async fn apply(self: Arc<Self>, d: Deployment, bytes: Result<Vec<u8>, String>) -> bool {
        let me = self.clone();
        let d2 = d.clone();
        let trusted = verify(&d, &self.trusted);
        let r = tokio::task::spawn_blocking(move || {
            trusted?;
            let bytes = bytes?;
            let init = d2.config.as_ref().map(|c| c.to_string());
            crate::panic::contained(|| {
                me.plugins.deploy(
                    &d2.name,
                    &d2.world,
                    &bytes,
                    &d2.sha256,
                    init.as_deref(),
                    &source_of(&d2),
                )
            })
            .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the deployment task failed: {e}")));
        match r {
            Ok(version) => {
                tracing::info!(plugin = %d.name, version = &version[..12], label = ?d.label,
                    "deployment applied");
                self.deployed
                    .lock()
                    .expect("deployed lock")
                    .insert(d.name.clone(), (d.sha256.clone(), d.label.clone()));
                self.refused.lock().expect("refused lock").remove(&d.name);
                true
            }
            Err(reason) => {
                tracing::error!(plugin = %d.name, version = %d.sha256, reason = %reason,
                    "deployment refused; the running version stays");
                self.refused.lock().expect("refused lock").insert(
                    d.name.clone(),
                    Refusal {
                        sha256: d.sha256.clone(),
                        label: d.label.clone(),
                        reason,
                        at_ms: now_ms(),
                    },
                );
                false
            }
        }
    }

    /// This process's status now.
    pub fn status(&self) -> InstanceStatus {
        let deployed = self.deployed.lock().expect("deployed lock").clone();
        let refused = self.refused.lock().expect("refused lock").clone();
        let plugins = self
            .plugins
            .status()
            .into_iter()
            .map(|p| PluginState {
                label: deployed
                    .get(&p.name)
                    .filter(|(sha, _)| *sha == p.version)
                    .and_then(|(_, l)| l.clone()),
                refused: refused.get(&p.name).cloned(),
                name: p.name,
                kind: p.kind.into(),
                version: p.version,
                source: p.source,
                since_ms: p.loaded_at_ms,
                faults: p.faults,
            })
            .collect();
        InstanceStatus {
            instance: self.instance.clone(),
            at_ms: now_ms(),
            plugins,
        }
    }

    /// The fleet as this process last read it, with its own status fresh.
    pub fn fleet(&self) -> FleetView {
        let mut view = self.fleet.lock().expect("fleet lock").clone();
        let me = self.status();
        view.instances.insert(me.instance.clone(), me);
        view
    }

    /// Publishes this process's status to the control topic.
    async fn publish(&self) {
        let status = self.status();
        let value = serde_json::to_vec(&status).expect("a status serializes");
        let key = format!("status/{}", self.instance);
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(10)).await {
            tracing::warn!(error = %e, "instance status not published");
        }
    }
}

/// The slot source of a deployed version: `deployment` and its label.
fn source_of(d: &Deployment) -> String {
    match &d.label {
        Some(l) => format!("deployment ({l})"),
        None => "deployment".into(),
    }
}

/// `control.instance_id`, or `<hostname>-<pid>`.
pub fn instance_id(c: &ControlConfig) -> String {
    c.instance_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "cdrs".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Creates `topic` compacted with one partition unless it exists (so a
/// topic an operator created needs no CreateTopics right). The
/// replication factor is the broker's default (`-1`), or 1 where the broker
/// does not take `-1`.
///
/// # Errors
/// The brokers do not answer within 10 s, or refuse to create it.
pub async fn ensure_topic(config: &Config, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::producer_config(&config.kafka.brokers, &config.kafka.options).create()?;
    // Asked by a consumer: a producer's metadata request may make a broker
    // with auto.create.topics.enable create it, uncompacted.
    let exists = {
        let group = format!("cdrs-control-{}", std::process::id());
        let probe: rdkafka::consumer::BaseConsumer =
            crate::kafka::reader_config(&config.kafka.brokers, &config.kafka.options, &group)
                .create()?;
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("no metadata from the brokers within 10 s: {e}"))?;
        md.topics()
            .iter()
            .any(|t| t.name() == topic && !t.partitions().is_empty())
    };
    if exists {
        return Ok(());
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact");
        let results = admin.create_topics(&[new], &opts).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic, "control topic created (compacted)");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return Ok(()),
            Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) if replication == -1 => {}
            Some(Err((_, e))) => anyhow::bail!("cannot create the control topic {topic:?}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_round_trips_through_its_records_in_any_order() {
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let (d, records) = deployment_records(
            "router",
            "router",
            &bytes,
            Some(serde_json::json!({"sticky": true})),
            Some("v2".into()),
            "ops@host",
            None,
        );
        assert_eq!(d.chunks, 3);
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|(_, v)| v.len() <= CHUNK_BYTES));
        let parsed: Vec<ControlRecord> = records
            .iter()
            .map(|(k, v)| parse(k.as_bytes(), Some(v)).unwrap())
            .collect();
        // The deployment first, then the chunks (as another partition
        // might deliver them): complete only with the last chunk.
        let mut a = Assembler::default();
        assert!(a.take(parsed[3].clone()).is_empty());
        assert!(a.take(parsed[0].clone()).is_empty());
        assert!(a.take(parsed[2].clone()).is_empty());
        let done = a.take(parsed[1].clone());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, d);
        assert_eq!(done[0].1.as_ref().unwrap(), &bytes);
        assert_eq!(a.waiting().count(), 0);
    }

    /// The JSON Schema in docs/ names exactly the fields the records have.
    #[test]
    fn the_documented_schema_matches_the_records() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/control-record.schema.json"
        );
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (old, _) = deployment_records("p", "router", b"v1", None, None, "me", None);
        let (d, _) = deployment_records(
            "p",
            "router",
            b"v2",
            Some(serde_json::json!({})),
            Some("v2".into()),
            "me",
            Some(&Deployment {
                label: Some("v1".into()),
                config: Some(serde_json::json!({})),
                signature: Some("c2ln".into()),
                ..old
            }),
        );
        let mut d = d;
        sign(&mut d, &ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
        d.canary_percent = Some(34);
        d.failed = Some(Failure {
            instance: "a".into(),
            reason: "rolled back".into(),
            at_ms: 1,
        });
        let status = InstanceStatus {
            instance: "a".into(),
            at_ms: 1,
            plugins: vec![PluginState {
                name: "p".into(),
                kind: "router".into(),
                version: d.sha256.clone(),
                label: Some("v2".into()),
                source: "deployment (v2)".into(),
                since_ms: 1,
                faults: 0,
                refused: Some(Refusal {
                    sha256: d.sha256.clone(),
                    label: None,
                    reason: "r".into(),
                    at_ms: 1,
                }),
            }],
        };
        let check = |def: &serde_json::Value, value: &serde_json::Value, at: &str| {
            let props = def["properties"].as_object().unwrap();
            let keys = value.as_object().unwrap();
            for k in keys.keys() {
                assert!(props.contains_key(k), "{at}.{k} is not in the schema");
            }
            for r in def["required"].as_array().into_iter().flatten() {
                assert!(
                    keys.contains_key(r.as_str().unwrap()),
                    "{at}: required {r} missing"
                );
            }
        };
        let defs = &schema["$defs"];
        let dj = serde_json::to_value(&d).unwrap();
        check(&defs["deployment"], &dj, "deployment");
        assert_eq!(
            dj.as_object().unwrap().len(),
            defs["deployment"]["properties"].as_object().unwrap().len()
        );
        check(
            &defs["deployment"]["properties"]["previous"],
            &dj["previous"],
            "previous",
        );
        check(
            &defs["deployment"]["properties"]["failed"],
            &dj["failed"],
            "failed",
        );
        let sj = serde_json::to_value(&status).unwrap();
        check(&defs["status"], &sj, "status");
        let plugin = &defs["status"]["properties"]["plugins"]["items"];
        check(plugin, &sj["plugins"][0], "plugins[]");
        check(
            &plugin["properties"]["refused"],
            &sj["plugins"][0]["refused"],
            "refused",
        );
    }

    #[test]
    fn only_a_signature_of_a_trusted_key_over_what_runs_verifies() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let trusted = [key.verifying_key()];
        let (mut d, _) =
            deployment_records("p", "router", b"v1", None, Some("v1".into()), "me", None);
        assert!(
            verify(&d, &[]).is_ok(),
            "no trusted keys: no signature needed"
        );
        assert!(verify(&d, &trusted).unwrap_err().starts_with("unsigned"));
        sign(&mut d, &other);
        assert!(verify(&d, &trusted)
            .unwrap_err()
            .contains("does not verify"));
        sign(&mut d, &key);
        verify(&d, &trusted).unwrap();
        // The label is not signed; what runs is.
        d.label = Some("relabelled".into());
        verify(&d, &trusted).unwrap();
        d.config = Some(serde_json::json!({"sticky": false}));
        assert!(verify(&d, &trusted).is_err(), "another init config");
        d.config = None;
        d.sha256 = "0".repeat(64);
        assert!(verify(&d, &trusted).is_err(), "another component");
    }

    #[test]
    fn a_deployment_retires_the_artifacts_nothing_names_any_more() {
        let deploy = |name: &str, bytes: &[u8], replaces: Option<&Deployment>| {
            deployment_records(name, "router", bytes, None, None, "ops", replaces).0
        };
        let mut fleet = FleetView::default();
        let v1 = deploy("r", b"one", None);
        assert!(retired_chunks(&fleet, &v1).is_empty(), "nothing before");
        fleet.deployments.insert("r".into(), v1.clone());
        let v2 = deploy("r", b"two", Some(&v1));
        assert!(retired_chunks(&fleet, &v2).is_empty(), "v2 names v1");
        fleet.deployments.insert("r".into(), v2.clone());
        // Another plugin runs v1's component: it stays.
        let other = deploy("s", b"one", None);
        fleet.deployments.insert("s".into(), other);
        let v3 = deploy("r", b"three", Some(&v2));
        assert!(
            retired_chunks(&fleet, &v3).is_empty(),
            "v1 still named by s"
        );
        fleet.deployments.remove("s");
        assert_eq!(
            retired_chunks(&fleet, &v3),
            vec![format!("artifact/{}/0", v1.sha256)]
        );
        // A rollback to v1 names v1 and v2: nothing goes.
        let mut back = v2.previous().unwrap();
        back.previous = Some(v2.as_previous());
        assert!(retired_chunks(&fleet, &back).is_empty());
    }

    #[test]
    fn orphan_chunks_are_let_go_past_the_limit_and_waited_ones_kept() {
        let chunk = |sha: &str, index: u32| ControlRecord::Chunk {
            sha256: sha.into(),
            index,
            bytes: vec![0; 100],
        };
        let mut a = Assembler::with_limit(250);
        let bytes = vec![7u8; 150];
        let (dep, records) = deployment_records("p", "router", &bytes, None, None, "ops", None);
        // The deployment first: its artifact is waited for.
        assert!(a.take(ControlRecord::Deployment(Box::new(dep))).is_empty());
        a.take(chunk("old", 0));
        a.take(chunk("new", 0));
        a.take(chunk("new", 1));
        assert!(!a.has_chunks("old"), "the oldest orphan goes first");
        assert!(a.has_chunks("new"));
        let mut done = Vec::new();
        for (k, v) in &records[..records.len() - 1] {
            done.extend(a.take(parse(k.as_bytes(), Some(v)).unwrap()));
        }
        assert!(!a.has_chunks("new"), "orphans go before a waited artifact");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1.as_deref(), Ok(bytes.as_slice()));
    }

    #[test]
    fn a_corrupt_artifact_or_record_is_refused_with_the_reason() {
        let (d, records) = deployment_records("r", "router", b"component", None, None, "me", None);
        let mut a = Assembler::default();
        a.take(ControlRecord::Chunk {
            sha256: d.sha256.clone(),
            index: 0,
            bytes: b"tampered".to_vec(),
        });
        let done = a.take(parse(records[1].0.as_bytes(), Some(&records[1].1)).unwrap());
        let why = done[0].1.as_ref().unwrap_err();
        assert!(why.contains("bytes") || why.contains("sha256"), "{why}");
        for (key, value, want) in [
            ("deployment/x", &b"{}"[..], "not a deployment record"),
            ("artifact/abc", &b"x"[..], "artifact/<sha256>/<index>"),
            ("whatever", &b"x"[..], "unknown key"),
        ] {
            let e = parse(key.as_bytes(), Some(value)).unwrap_err();
            assert!(e.contains(want), "{key}: {e}");
        }
        let mut other = d.clone();
        other.name = "y".into();
        let e = parse(b"deployment/x", Some(&serde_json::to_vec(&other).unwrap())).unwrap_err();
        assert!(e.contains("names plugin \"y\""), "{e}");
        assert_eq!(
            parse(b"status/a", None).unwrap(),
            ControlRecord::Tombstone("status/a".into())
        );
    }
}
