use super::*;
use std::sync::Mutex as StdMutex;

fn record(partition: i32, offset: i64) -> Record {
    Record {
        topic: "t".into(),
        partition,
        offset,
        timestamp_ms: None,
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(format!("{{\"n\":{offset}}}").into_bytes()),
        headers: vec![],
    }
}

/// `(stream, subscribers)` as the hook heard them.
type Heard = Arc<StdMutex<Vec<(String, u32)>>>;

/// Streams whose subscriber counts are written down in `seen`.
fn streams() -> (Streams, Heard) {
    let seen: Heard = Arc::default();
    let log = seen.clone();
    let streams = Streams::new(
        Arc::new(Metrics::new()),
        Box::new(move |name, n| log.lock().unwrap().push((name.to_string(), n))),
    );
    (streams, seen)
}

fn append(s: &Stream, offsets: std::ops::Range<i64>, cfg: &SseConfig) {
    let records: Vec<Record> = offsets.map(|o| record(0, o)).collect();
    let refs: Vec<&Record> = records.iter().collect();
    s.append(&refs, cfg).unwrap();
}

/// The ids of the next `n` items (`lost:` / `cutoff:` + reason for the
/// others).
async fn read(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("an item within 5 s");
        out.push(match item {
            Some(Item::Event(e)) => e.id.to_string(),
            Some(Item::Lost(l)) => format!("lost:{}", l.oldest_id.unwrap_or_default()),
            Some(Item::Cutoff(c)) => format!("cutoff:{}", c.reason),
            None => "end".into(),
        });
    }
    out
}

fn ids(offsets: std::ops::Range<i64>) -> Vec<String> {
    offsets.map(|o| format!("t/0/{o}")).collect()
}

#[tokio::test]
async fn nothing_is_delivered_without_a_subscriber_and_the_registry_hears_the_count() {
    let (streams, seen) = streams();
    let cfg = SseConfig::default();
    let r = record(0, 1);
    let e = streams.deliver("sse://s", &[&r], &cfg).unwrap_err();
    assert!(matches!(e, DeliveryError::NoSubscriber { .. }), "{e}");
    assert!(!e.retryable() && !e.unreachable());
    let stream = streams.stream("s");
    let sub = stream.subscribe(None, "a".into(), &cfg).unwrap();
    streams.deliver("sse://s", &[&r], &cfg).unwrap();
    drop(sub);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("s".into(), 1), ("s".into(), 0)]
    );
    assert!(streams.deliver("sse://s", &[&r], &cfg).is_err());
}

#[tokio::test]
async fn subscribers_read_in_order_once_and_resume_after_their_last_id() {
    let (streams, _) = streams();
    let cfg = SseConfig::default();
    let stream = streams.stream("s");
    let mut a = stream.subscribe(None, "a".into(), &cfg).unwrap();
    append(&stream, 0..10, &cfg);
    // A redelivery of ids still in the buffer is not appended again.
    append(&stream, 5..12, &cfg);
    assert_eq!(read(&mut a, 12).await, ids(0..12));
    // A subscriber that read up to t/0/3 comes back.
    let mut b = stream.subscribe(Some("t/0/3"), "b".into(), &cfg).unwrap();
    assert_eq!(read(&mut b, 8).await, ids(4..12));
    append(&stream, 12..14, &cfg);
    assert_eq!(read(&mut a, 2).await, ids(12..14));
    assert_eq!(read(&mut b, 2).await, ids(12..14));
    let status = streams.status();
    assert_eq!(status[0].subscribers.len(), 2);
    assert_eq!(status[0].buffered_records, 14);
    assert_eq!(status[0].subscribers[0].lag_records, 0);
}

#[tokio::test]
async fn a_resume_point_that_left_the_buffer_is_told_before_the_buffer_follows() {
    let (streams, _) = streams();
    let cfg = SseConfig {
        replay_max_records: 5,
        max_subscriber_lag_records: 5,
        ..SseConfig::default()
    };
    let stream = streams.stream("s");
    let _keep = stream.subscribe(None, "keep".into(), &cfg).unwrap();
    append(&stream, 0..10, &cfg);
    let mut late = stream
        .subscribe(Some("t/0/2"), "late".into(), &cfg)
        .unwrap();
    let mut got = read(&mut late, 6).await;
    assert_eq!(got.remove(0), "lost:t/0/5");
    assert_eq!(got, ids(5..10));
    let mut unknown = stream
        .subscribe(Some("other/1/1"), "u".into(), &cfg)
        .unwrap();
    assert_eq!(read(&mut unknown, 1).await, vec!["lost:t/0/5".to_string()]);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_at_the_lag_and_memory_stays_bounded() {
    let (streams, seen) = streams();
    let cfg = SseConfig {
        replay_max_records: 100,
        max_subscriber_lag_records: 50,
        ..SseConfig::default()
    };
    let stream = streams.stream("s");
    let mut reader = stream.subscribe(None, "reader".into(), &cfg).unwrap();
    let mut stuck = stream.subscribe(None, "stuck".into(), &cfg).unwrap();
    for chunk in 0..10 {
        append(&stream, chunk * 20..chunk * 20 + 20, &cfg);
        assert_eq!(
            read(&mut reader, 20).await,
            ids(chunk * 20..chunk * 20 + 20)
        );
    }
    assert_eq!(stream.connected(), 1);
    assert_eq!(seen.lock().unwrap().last(), Some(&("s".to_string(), 1)));
    // What it had not read yet is gone from its view: the cut-off comes
    // at once, with the reason; then the end.
    assert_eq!(
        read(&mut stuck, 2).await,
        vec!["cutoff:lag".to_string(), "end".to_string()]
    );
    let status = &streams.status()[0];
    assert_eq!(status.buffered_records, 100);
    assert_eq!(status.oldest_id.as_deref(), Some("t/0/100"));
}

#[tokio::test]
async fn a_stream_removed_from_the_config_cuts_its_subscribers_off() {
    let (streams, _) = streams();
    let cfg = SseConfig::default();
    let mut sub = streams
        .stream("gone")
        .subscribe(None, "a".into(), &cfg)
        .unwrap();
    let _other = streams
        .stream("kept")
        .subscribe(None, "b".into(), &cfg)
        .unwrap();
    streams.retain(&["kept"]);
    assert_eq!(read(&mut sub, 1).await, vec!["cutoff:removed".to_string()]);
    assert_eq!(streams.status().len(), 1);
}

#[tokio::test]
async fn closing_ends_every_subscription() {
    let (streams, _) = streams();
    let cfg = SseConfig::default();
    let mut sub = streams
        .stream("s")
        .subscribe(None, "a".into(), &cfg)
        .unwrap();
    streams.close();
    assert_eq!(read(&mut sub, 1).await, vec!["end".to_string()]);
}
