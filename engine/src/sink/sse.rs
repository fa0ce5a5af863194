//! SSE sink: an `sse://NAME` target delivers into the stream NAME, which
//! subscribers read as server-sent events from `GET /v1/streams/NAME` on the
//! admin API (WHATWG HTML, "Server-sent events").
//!
//! Each record becomes one event: `id` = `topic/partition/offset`, `data`
//! = the record as one [`WireRecord`] of the HTTP sink's body. A stream
//! keeps its events in a replay buffer bounded by records, bytes and age
//! (`[delivery.sse]`); subscribers read from it and hold only a cursor.
//!
//! Guarantees:
//! * **delivered** means appended to the replay buffer while at least one
//!   subscriber is connected: from there every connected subscriber reads
//!   it, and one that reconnects with `Last-Event-ID` within the buffer's
//!   bounds reads it too. With no subscriber connected a delivery fails
//!   ([`DeliveryError::NoSubscriber`]) and the target is down (the capacity
//!   registry is told, [`Streams::new`]), so records go elsewhere or wait.
//! * **order**: every subscriber reads events in the buffer's order; the
//!   dispatcher's lanes append a key's records in offset order, so per-key
//!   order holds as for HTTP targets.
//! * **once per buffer**: a record whose id is still in the buffer (a
//!   redelivery after a rebalance) is not appended again.
//! * **resume or be told**: a `Last-Event-ID` still in the buffer resumes
//!   right after it; one that is not gets [`Item::Lost`] first (with the
//!   oldest id kept), then the whole buffer — never a silent gap.
//! * **bounded memory**: a subscriber that falls more than
//!   `max_subscriber_lag_records` behind the newest event, or whose next
//!   event leaves the buffer, is cut off ([`Item::Cutoff`] with the reason,
//!   then its response ends).
//!
//! Each CDRS process serves the records it routed itself: in a consumer
//! group of several, a subscriber reads the stream of every member.

use crate::config::SseConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::sink::http::{DeliveryError, WireRecord};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Events a subscriber takes from the buffer under one lock.
const READ_BATCH: usize = 256;

/// Told whenever the number of subscribers of a stream changes:
/// `(stream name, subscribers connected)`.
pub type SubscribersHook = Box<dyn Fn(&str, u32) + Send + Sync>;

/// The streams of this process's `sse://` targets, made on first use.
pub struct Streams {
    streams: Mutex<HashMap<Arc<str>, Arc<Stream>>>,
    metrics: Arc<Metrics>,
    on_subscribers: Arc<SubscribersHook>,
    closed: Arc<AtomicBool>,
}

impl Streams {
    /// No streams yet; `on_subscribers` hears every change in a stream's
    /// subscriber count (the daemon passes it to the capacity registry,
    /// which keeps the target down while the count is 0).
    pub fn new(metrics: Arc<Metrics>, on_subscribers: SubscribersHook) -> Streams {
        Streams {
            streams: Mutex::default(),
            metrics,
            on_subscribers: Arc::new(on_subscribers),
            closed: Arc::default(),
        }
    }

    /// The stream `name`, made empty on first use.
    pub fn stream(&self, name: &str) -> Arc<Stream> {
        let mut streams = self.streams.lock().expect("streams lock");
        if let Some(s) = streams.get(name) {
            return s.clone();
        }
        let name: Arc<str> = name.into();
        let s = Arc::new(Stream::new(
            name.clone(),
            self.metrics.clone(),
            self.on_subscribers.clone(),
            self.closed.clone(),
        ));
        streams.insert(name, s.clone());
        s
    }

    /// Delivers `records` (offset order per key) to the stream of `url`
    /// (`sse://NAME`).
    ///
    /// # Errors
    /// [`DeliveryError::NoSubscriber`]: nobody is connected to the stream;
    /// nothing was appended.
    pub fn deliver(
        &self,
        url: &str,
        records: &[&Record],
        cfg: &SseConfig,
    ) -> Result<(), DeliveryError> {
        let name = crate::config::target_stream(url).unwrap_or(url);
        self.stream(name).append(records, cfg)
    }

    /// Cuts off the subscribers of streams not in `names` (their targets
    /// left the config) and forgets those streams.
    pub fn retain(&self, names: &[&str]) {
        let gone: Vec<Arc<Stream>> = {
            let mut streams = self.streams.lock().expect("streams lock");
            let gone = streams
                .iter()
                .filter(|(n, _)| !names.contains(&&***n))
                .map(|(_, s)| s.clone())
                .collect();
            streams.retain(|n, _| names.contains(&&**n));
            gone
        };
        for s in gone {
            let subs: Vec<Arc<Subscriber>> = s.subscribers.lock().expect("subscribers").clone();
            for sub in subs {
                s.cut(
                    &sub,
                    "removed",
                    format!("the target of stream {:?} left the config", s.name),
                );
            }
        }
    }

    /// Ends every subscription (the process is stopping): each response
    /// ends after the events already taken.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for s in self.streams.lock().expect("streams lock").values() {
            s.head.send_modify(|_| ());
        }
    }

    /// Every stream's state, by name.
    pub fn status(&self) -> Vec<StreamStatus> {
        let streams: Vec<Arc<Stream>> = self
            .streams
            .lock()
            .expect("streams lock")
            .values()
            .cloned()
            .collect();
        let mut out: Vec<StreamStatus> = streams.iter().map(|s| s.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// One event of a stream.
#[derive(Debug)]
pub struct Event {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// `topic/partition/offset` of the record.
    pub id: Arc<str>,
    /// The record as JSON ([`WireRecord`]), one line.
    pub data: String,
    at: Instant,
}

#[derive(Default)]
struct Buffer {
    events: VecDeque<Arc<Event>>,
    /// `seq` of `events[0]` (of the next event when empty).
    first_seq: u64,
    next_seq: u64,
    bytes: u64,
    /// id → seq of the events held.
    index: HashMap<Arc<str>, u64>,
}

impl Buffer {
    /// Drops the oldest events beyond the bounds of `cfg`.
    fn evict(&mut self, cfg: &SseConfig, now: Instant) {
        let max_age = Duration::from_millis(cfg.replay_max_age_ms);
        while let Some(front) = self.events.front() {
            let over = self.events.len() > cfg.replay_max_records
                || self.bytes > cfg.replay_max_bytes
                || now.duration_since(front.at) > max_age;
            if !over {
                break;
            }
            let e = self.events.pop_front().expect("front exists");
            self.bytes -= e.data.len() as u64;
            self.index.remove(&e.id);
            self.first_seq = e.seq + 1;
        }
    }
}

/// A subscriber as the stream sees it.
struct Subscriber {
    number: u64,
    peer: String,
    /// `seq` of the next event it will be given.
    cursor: AtomicU64,
    cut: OnceLock<Cutoff>,
}

/// Why a subscriber was cut off.
#[derive(Debug, Clone, Serialize)]
pub struct Cutoff {
    /// lag | evicted | removed
    pub reason: &'static str,
    pub message: String,
}

/// A resume point that is not in the replay buffer.
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    /// The `Last-Event-ID` asked for.
    pub last_event_id: String,
    /// The oldest id still kept, from which the events follow; none if the
    /// buffer is empty.
    pub oldest_id: Option<String>,
    pub message: String,
}

/// What a subscriber reads next.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Arc<Event>),
    /// Its `Last-Event-ID` was not in the buffer; the buffer follows.
    Lost(Lost),
    /// It was cut off; nothing follows.
    Cutoff(Cutoff),
}

/// A stream's state, for `GET /v1/streams` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub subscribers: Vec<SubscriberStatus>,
    /// Events and bytes in the replay buffer.
    pub buffered_records: usize,
    pub buffered_bytes: u64,
    pub oldest_id: Option<String>,
    pub newest_id: Option<String>,
    /// Events appended since the process started.
    pub events: u64,
}

/// One connected subscriber.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStatus {
    pub peer: String,
    /// Events behind the newest.
    pub lag_records: u64,
}

/// One `sse://` stream: its replay buffer and subscribers.
pub struct Stream {
    name: Arc<str>,
    buffer: Mutex<Buffer>,
    /// The buffer's `next_seq`, changed on each append (and to wake
    /// subscribers on a cutoff or stop).
    head: watch::Sender<u64>,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    numbers: AtomicU64,
    metrics: Arc<Metrics>,
    on_subscribers: Arc<SubscribersHook>,
    closed: Arc<AtomicBool>,
}

impl Stream {
    fn new(
        name: Arc<str>,
        metrics: Arc<Metrics>,
        on_subscribers: Arc<SubscribersHook>,
        closed: Arc<AtomicBool>,
    ) -> Stream {
        Stream {
            name,
            buffer: Mutex::default(),
            head: watch::Sender::new(0),
            subscribers: Mutex::default(),
            numbers: AtomicU64::new(0),
            metrics,
            on_subscribers,
            closed,
        }
    }

    /// Subscribers connected now.
    pub fn connected(&self) -> usize {
        self.subscribers.lock().expect("subscribers").len()
    }

    /// Appends `records` in order, skipping ids already in the buffer, then
    /// evicts beyond the bounds and cuts off subscribers too far behind.
    ///
    /// # Errors
    /// [`DeliveryError::NoSubscriber`] when nobody is connected.
    pub fn append(&self, records: &[&Record], cfg: &SseConfig) -> Result<(), DeliveryError> {
        if self.connected() == 0 {
            return Err(DeliveryError::NoSubscriber {
                stream: self.name.to_string(),
            });
        }
        let prepared: Vec<(Arc<str>, String)> = records
            .iter()
            .map(|r| {
                let data = serde_json::to_string(&WireRecord::from_record(r))
                    .expect("a wire record serializes");
                (Arc::from(r.id()), data)
            })
            .collect();
        let now = Instant::now();
        let (first, next, appended, len, bytes) = {
            let mut b = self.buffer.lock().expect("buffer lock");
            let mut appended = 0;
            for (id, data) in prepared {
                if b.index.contains_key(&id) {
                    continue;
                }
                let seq = b.next_seq;
                b.next_seq += 1;
                b.bytes += data.len() as u64;
                b.index.insert(id.clone(), seq);
                b.events.push_back(Arc::new(Event {
                    seq,
                    id,
                    data,
                    at: now,
                }));
                appended += 1;
            }
            b.evict(cfg, now);
            (b.first_seq, b.next_seq, appended, b.events.len(), b.bytes)
        };
        self.check_lag(first, next, cfg);
        self.head.send_replace(next);
        let label = [&*self.name];
        self.metrics
            .sse_events
            .with_label_values(&label)
            .inc_by(appended);
        self.metrics
            .sse_buffer_records
            .with_label_values(&label)
            .set(len as i64);
        self.metrics
            .sse_buffer_bytes
            .with_label_values(&label)
            .set(bytes as i64);
        Ok(())
    }

    /// Cuts off subscribers whose next event left the buffer (`first`) or
    /// that are more than `max_subscriber_lag_records` behind `next`.
    fn check_lag(&self, first: u64, next: u64, cfg: &SseConfig) {
        let mut late = Vec::new();
        let mut max_lag = 0;
        for s in self.subscribers.lock().expect("subscribers").iter() {
            let cursor = s.cursor.load(Ordering::Relaxed);
            let lag = next.saturating_sub(cursor);
            if cursor < first {
                late.push((
                    s.clone(),
                    "evicted",
                    format!(
                        "its next event left the replay buffer (delivery.sse.replay_max_records \
                     {}, replay_max_bytes {}, replay_max_age_ms {}); reconnect with \
                     Last-Event-ID to learn what was lost",
                        cfg.replay_max_records, cfg.replay_max_bytes, cfg.replay_max_age_ms
                    ),
                ));
            } else if lag > cfg.max_subscriber_lag_records {
                late.push((
                    s.clone(),
                    "lag",
                    format!(
                        "{lag} events behind the newest, more than \
                     delivery.sse.max_subscriber_lag_records ({}); reconnect with \
                     Last-Event-ID to resume",
                        cfg.max_subscriber_lag_records
                    ),
                ));
            } else {
                max_lag = max_lag.max(lag);
            }
        }
        self.metrics
            .sse_lag
            .with_label_values(&[&*self.name])
            .set(max_lag as i64);
        for (s, reason, message) in late {
            self.cut(&s, reason, message);
        }
    }

    /// Cuts `sub` off (once): it leaves the connected subscribers and
    /// reads `Item::Cutoff` next.
    fn cut(&self, sub: &Arc<Subscriber>, reason: &'static str, message: String) {
        if sub
            .cut
            .set(Cutoff {
                reason,
                message: message.clone(),
            })
            .is_err()
        {
            return;
        }
        tracing::warn!(stream = %self.name, peer = %sub.peer, reason, %message,
            "sse subscriber cut off");
        self.metrics
            .sse_cutoffs
            .with_label_values(&[&*self.name, reason])
            .inc();
        self.leave(sub);
        self.head.send_modify(|_| ());
    }

    /// Removes `sub` from the connected subscribers.
    fn leave(&self, sub: &Subscriber) {
        let n = {
            let mut subs = self.subscribers.lock().expect("subscribers");
            let before = subs.len();
            subs.retain(|s| s.number != sub.number);
            if subs.len() == before {
                return;
            }
            subs.len()
        };
        self.subscribers_changed(n);
    }

    fn subscribers_changed(&self, n: usize) {
        self.metrics
            .sse_subscribers
            .with_label_values(&[&*self.name])
            .set(n as i64);
        (self.on_subscribers)(&self.name, n as u32);
    }

    /// A new subscriber named `peer`, reading after `last_event_id` if
    /// given (else from the next event appended).
    ///
    /// # Errors
    /// [`TooManySubscribers`]: `delivery.sse.max_subscribers` are
    /// connected.
    pub fn subscribe(
        self: &Arc<Self>,
        last_event_id: Option<&str>,
        peer: String,
        cfg: &SseConfig,
    ) -> Result<Subscription, TooManySubscribers> {
        let mut subs = self.subscribers.lock().expect("subscribers");
        if subs.len() >= cfg.max_subscribers {
            return Err(TooManySubscribers {
                stream: self.name.to_string(),
                max: cfg.max_subscribers,
            });
        }
        let (cursor, lost) = {
            let mut b = self.buffer.lock().expect("buffer lock");
            b.evict(cfg, Instant::now());
            match last_event_id {
                None => (b.next_seq, None),
                Some(id) => match b.index.get(id) {
                    Some(seq) => (seq + 1, None),
                    None => {
                        let oldest = b.events.front().map(|e| e.id.to_string());
                        let message = match &oldest {
                            Some(o) => format!(
                                "event {id:?} is not in the replay buffer (oldest kept: {o:?}); \
                                 events between them are lost, the buffer follows"
                            ),
                            None => format!(
                                "event {id:?} is not in the replay buffer, which is empty; \
                                 events after it are lost"
                            ),
                        };
                        let lost = Lost {
                            last_event_id: id.to_string(),
                            oldest_id: oldest,
                            message,
                        };
                        (b.first_seq, Some(lost))
                    }
                },
            }
        };
        if last_event_id.is_some() {
            let result = if lost.is_some() { "lost" } else { "replayed" };
            self.metrics
                .sse_resumes
                .with_label_values(&[&*self.name, result])
                .inc();
        }
        let sub = Arc::new(Subscriber {
            number: self.numbers.fetch_add(1, Ordering::Relaxed),
            peer,
            cursor: AtomicU64::new(cursor),
            cut: OnceLock::new(),
        });
        subs.push(sub.clone());
        let n = subs.len();
        drop(subs);
        self.subscribers_changed(n);
        tracing::debug!(stream = %self.name, peer = %sub.peer, resumed = last_event_id.is_some(),
            "sse subscriber connected");
        Ok(Subscription {
            stream: self.clone(),
            sub,
            head: self.head.subscribe(),
            pending: VecDeque::new(),
            lost,
            done: false,
        })
    }

    fn status(&self) -> StreamStatus {
        let (records, bytes, oldest, newest, next) = {
            let b = self.buffer.lock().expect("buffer lock");
            (
                b.events.len(),
                b.bytes,
                b.events.front().map(|e| e.id.to_string()),
                b.events.back().map(|e| e.id.to_string()),
                b.next_seq,
            )
        };
        StreamStatus {
            name: self.name.to_string(),
            subscribers: self
                .subscribers
                .lock()
                .expect("subscribers")
                .iter()
                .map(|s| SubscriberStatus {
                    peer: s.peer.clone(),
                    lag_records: next.saturating_sub(s.cursor.load(Ordering::Relaxed)),
                })
                .collect(),
            buffered_records: records,
            buffered_bytes: bytes,
            oldest_id: oldest,
            newest_id: newest,
            events: next,
        }
    }
}

/// `delivery.sse.max_subscribers` are connected already.
#[derive(Debug, thiserror::Error)]
#[error("stream {stream:?} has {max} subscribers, its limit (delivery.sse.max_subscribers)")]
pub struct TooManySubscribers {
    pub stream: String,
    pub max: usize,
}

/// One subscriber's reading of a stream; dropping it disconnects.
pub struct Subscription {
    stream: Arc<Stream>,
    sub: Arc<Subscriber>,
    head: watch::Receiver<u64>,
    pending: VecDeque<Arc<Event>>,
    lost: Option<Lost>,
    done: bool,
}

impl Subscription {
    /// The next item, waiting for one; `None` once cut off or when the
    /// process stops.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(l) = self.lost.take() {
                return Some(Item::Lost(l));
            }
            if let Some(e) = self.pending.pop_front() {
                self.sub.cursor.store(e.seq + 1, Ordering::Relaxed);
                return Some(Item::Event(e));
            }
            if self.done {
                return None;
            }
            if let Some(c) = self.sub.cut.get() {
                self.done = true;
                return Some(Item::Cutoff(c.clone()));
            }
            if self.stream.closed.load(Ordering::Relaxed) {
                return None;
            }
            // Seen before reading, so an append after the read wakes us.
            self.head.borrow_and_update();
            let evicted = {
                let b = self.stream.buffer.lock().expect("buffer lock");
                let cursor = self.sub.cursor.load(Ordering::Relaxed);
                if cursor < b.first_seq {
                    true
                } else {
                    let start = (cursor - b.first_seq) as usize;
                    self.pending.extend(
                        b.events
                            .range(start.min(b.events.len())..)
                            .take(READ_BATCH)
                            .cloned(),
                    );
                    false
                }
            };
            if evicted {
                self.stream.cut(
                    &self.sub,
                    "evicted",
                    "its next event left the replay buffer; reconnect with Last-Event-ID \
                     to learn what was lost"
                        .into(),
                );
                continue;
            }
            if self.pending.is_empty() && self.head.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.sub.cut.get().is_none() {
            tracing::debug!(stream = %self.stream.name, peer = %self.sub.peer,
                "sse subscriber disconnected");
            self.stream.leave(&self.sub);
        }
    }
}

#[cfg(test)]
mod tests;
