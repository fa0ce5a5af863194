//! The event stream behind `GET /v1/events` and the dashboard: what changed
//! in a running CDRS (a target joined, left or changed health, a circuit
//! breaker opened or closed, a plugin was swapped, refused or rolled back, a
//! partition was assigned or revoked, the config was reloaded).
//!
//! Each event is a JSON object `{"id", "time", "type", ...fields}`: `id`
//! counts up from 1 in this process, `time` is RFC 3339 UTC with
//! milliseconds. The last [`HISTORY`] events stay in memory so a client that
//! reconnects with `Last-Event-ID` (the SSE spec's resume header, WHATWG HTML
//! §9.2) gets exactly the events it missed; when they are no longer all
//! there, or the id comes from an earlier process, it gets an `events.gap`
//! event first and then everything still held.
//!
//! Publishing never blocks and never fails: it takes one short lock, and a
//! subscriber that falls more than [`SUBSCRIBER_BUFFER`] events behind is
//! disconnected (its client reconnects with `Last-Event-ID` and resumes from
//! the history).

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Events kept for `Last-Event-ID` resumes.
pub const HISTORY: usize = 1024;

/// Events a live subscriber may fall behind before it is disconnected.
pub const SUBSCRIBER_BUFFER: usize = 256;

/// One event, as sent in an SSE `data:` line.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `target.joined` | `target.left` | `target.health` | `breaker.opened`
    /// | `breaker.closed` | `plugin.swapped` | `plugin.refused` |
    /// `plugin.rolled_back` | `partition.assigned` | `partition.revoked` |
    /// `config.reloaded` | `config.refused` | `route.moved` | `events.gap`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The type's own fields (`target`, `from`, `to`, `reason`, ...).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

struct Inner {
    next_id: u64,
    history: VecDeque<Arc<Event>>,
}

/// The event bus: cheap to clone, one per running pipeline.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
    /// `None` tells subscribers the process is stopping.
    live: broadcast::Sender<Option<Arc<Event>>>,
    closed: Arc<AtomicBool>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                history: VecDeque::with_capacity(HISTORY),
            })),
            live: broadcast::channel(SUBSCRIBER_BUFFER).0,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a new subscriber gets: the events it missed, then the live ones.
pub struct Subscription {
    /// Events after the `Last-Event-ID` (or none without one), oldest first;
    /// starts with an `events.gap` event when some were no longer held.
    pub backlog: Vec<Arc<Event>>,
    /// Live events; `None` (or a closed channel) when the process stops,
    /// `Lagged` when this subscriber fell [`SUBSCRIBER_BUFFER`] behind.
    pub live: broadcast::Receiver<Option<Arc<Event>>>,
    /// Set when the process was already stopping.
    pub closed: bool,
}

impl Events {
    /// Records an event of `kind` with `fields` (a JSON object; anything
    /// else is stored under `"value"`) and sends it to live subscribers.
    pub fn publish(&self, kind: &'static str, fields: Value) {
        let fields = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_string(), other)]),
        };
        let mut inner = self.inner.lock().expect("events lock");
        let event = Arc::new(Event {
            id: inner.next_id,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            fields,
        });
        inner.next_id += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // Sent under the lock, so a subscriber's backlog and live events
        // neither overlap nor leave a hole. No receivers is not an error.
        let _ = self.live.send(Some(event));
    }

    /// Ends every subscription (the admin API is stopping): streams end
    /// instead of holding the stop until its grace runs out.
    pub fn close(&self) {
        let _inner = self.inner.lock().expect("events lock");
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.live.send(None);
    }

    /// Subscribes; `last_id` is the client's `Last-Event-ID` (none: only
    /// new events; unparseable ids are treated as from another process).
    pub fn subscribe(&self, last_id: Option<&str>) -> Subscription {
        let inner = self.inner.lock().expect("events lock");
        let live = self.live.subscribe();
        let closed = self.closed.load(Ordering::Relaxed);
        let Some(last) = last_id else {
            return Subscription {
                backlog: Vec::new(),
                live,
                closed,
            };
        };
        let newest = inner.next_id - 1;
        let oldest = inner.history.front().map_or(inner.next_id, |e| e.id);
        let mut backlog = Vec::new();
        match last.trim().parse::<u64>() {
            // Ids count from 1 in every process: one above the newest is
            // from an earlier process.
            Ok(id) if id <= newest && id + 1 >= oldest => {
                backlog.extend(inner.history.iter().filter(|e| e.id > id).cloned());
            }
            parsed => {
                let reason = match parsed {
                    Ok(id) if id > newest => "the id is from an earlier process",
                    Ok(_) => "the events after the id are no longer held",
                    Err(_) => "the id is not one of this stream's",
                };
                // Its id says "resume from just before the oldest held".
                backlog.push(Arc::new(Event {
                    id: oldest - 1,
                    time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    kind: "events.gap",
                    fields: Map::from_iter([
                        ("last_event_id".into(), Value::from(last)),
                        ("reason".into(), Value::from(reason)),
                        ("oldest_held".into(), Value::from(oldest)),
                    ]),
                }));
                backlog.extend(inner.history.iter().cloned());
            }
        }
        Subscription {
            backlog,
            live,
            closed,
        }
    }

    /// The newest `n` events, newest first (the dashboard's first paint).
    pub fn recent(&self, n: usize) -> Vec<Arc<Event>> {
        let inner = self.inner.lock().expect("events lock");
        inner.history.iter().rev().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_resume_gets_exactly_the_events_after_the_id_then_live_ones() {
        let ev = Events::default();
        for i in 0..5 {
            ev.publish("target.health", json!({"target": format!("t{i}")}));
        }
        let mut sub = ev.subscribe(Some("3"));
        assert_eq!(ids(&sub.backlog), [4, 5]);
        ev.publish("config.reloaded", json!({}));
        let next = sub.live.try_recv().unwrap().unwrap();
        assert_eq!((next.id, next.kind), (6, "config.reloaded"));
        let text = serde_json::to_value(&*next).unwrap();
        assert_eq!(text["type"], "config.reloaded");
        assert!(text["time"].as_str().unwrap().ends_with('Z'), "{text}");
        // Caught up: nothing to replay.
        assert!(ev.subscribe(Some("6")).backlog.is_empty());
        assert!(ev.subscribe(None).backlog.is_empty());
        ev.close();
        assert!(sub.live.try_recv().unwrap().is_none(), "stopping");
        assert!(ev.subscribe(None).closed);
    }

    #[test]
    fn ids_no_longer_held_or_from_another_process_get_a_gap_event_then_the_history() {
        let ev = Events::default();
        for _ in 0..HISTORY + 10 {
            ev.publish("partition.assigned", Value::Null);
        }
        let old = ev.subscribe(Some("2")).backlog;
        assert_eq!(old[0].kind, "events.gap");
        assert_eq!(old.len(), HISTORY + 1);
        assert_eq!(old[1].id, 11, "the oldest held");
        // The oldest held id minus one still resumes without a gap.
        assert_eq!(ev.subscribe(Some("10")).backlog.len(), HISTORY);
        for bad in ["99999", "abc"] {
            let b = ev.subscribe(Some(bad)).backlog;
            assert_eq!(b[0].kind, "events.gap", "{bad}");
            assert_eq!(b.len(), HISTORY + 1);
        }
        assert_eq!(
            ids(&ev.recent(2)),
            [HISTORY as u64 + 10, HISTORY as u64 + 9]
        );
    }
}
