//! Capturing the live router's input (`GET /v1/plugins/{router}/capture`):
//! the next batches it routes, each with the target snapshot it was given
//! and its decisions, in the fixture format `cdrs plugin test --replay` and
//! `cdrs simulate --trace` read back ([`super::testbed::capture_line`]).
//!
//! Guarantees: one capture at a time; while none runs, the data path pays
//! one relaxed atomic load per batch; a capture holds at most the records
//! asked for ([`MAX_CAPTURE_RECORDS`]); records carry their key, offset,
//! timestamp and the headers the router asked for, their value only if the
//! router asked for it.

use super::router::{Route, RouterPlugin};
use super::testbed::capture_line;
use crate::capacity::Snapshot;
use crate::record::Record;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Most records one capture may ask for.
pub const MAX_CAPTURE_RECORDS: usize = 100_000;

/// Another capture is running.
#[derive(Debug, thiserror::Error)]
#[error("a capture is already running; one at a time")]
pub struct CaptureBusy;

/// The capture point of the router step.
#[derive(Default)]
pub struct Capture {
    armed: AtomicBool,
    active: Mutex<Option<Active>>,
}

struct Active {
    /// Records still to capture.
    left: usize,
    lines: Vec<Value>,
    /// Told when `left` reaches 0.
    done: Option<oneshot::Sender<()>>,
}

impl Capture {
    /// Starts capturing the next `records` records (1..=
    /// [`MAX_CAPTURE_RECORDS`], clamped); the receiver hears when they are
    /// in. Collect them with [`Capture::finish`].
    ///
    /// # Errors
    /// [`CaptureBusy`] while another capture runs.
    pub fn start(&self, records: usize) -> Result<oneshot::Receiver<()>, CaptureBusy> {
        let mut active = self.active.lock().expect("capture lock");
        if active.is_some() {
            return Err(CaptureBusy);
        }
        let (tx, rx) = oneshot::channel();
        *active = Some(Active {
            left: records.clamp(1, MAX_CAPTURE_RECORDS),
            lines: Vec::new(),
            done: Some(tx),
        });
        self.armed.store(true, Ordering::Release);
        Ok(rx)
    }

    /// Ends the capture and returns its batches, one JSON line each (fewer
    /// records than asked when it timed out).
    pub fn finish(&self) -> Vec<Value> {
        self.armed.store(false, Ordering::Release);
        self.active
            .lock()
            .expect("capture lock")
            .take()
            .map(|a| a.lines)
            .unwrap_or_default()
    }

    /// Whether a capture runs (one relaxed load: the data path's cost).
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Records one routed batch (cut to what the capture still wants).
    pub fn offer(
        &self,
        router: &RouterPlugin,
        view: &Snapshot,
        (topic, partition): (&str, i32),
        records: &[&Record],
        routes: &[Route],
    ) {
        let mut guard = self.active.lock().expect("capture lock");
        let Some(a) = guard.as_mut() else {
            return;
        };
        if a.left == 0 {
            return;
        }
        let n = records.len().min(a.left);
        a.lines.push(capture_line(
            (&router.meta.name, &router.meta.hash),
            topic,
            partition,
            view,
            &records[..n],
            &routes[..n],
            (&router.options.headers, router.options.needs_value),
        ));
        a.left -= n;
        if a.left == 0 {
            if let Some(done) = a.done.take() {
                let _ = done.send(());
            }
        }
    }
}
