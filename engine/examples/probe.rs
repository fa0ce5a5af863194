// scratch: which producer setting slows Tansu
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::{Duration, Instant};

struct Ctx(Instant, std::sync::atomic::AtomicU64);
impl rdkafka::ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        eprintln!(
            "{:8.3} {level:?} {fac} {msg}",
            self.0.elapsed().as_secs_f64()
        );
    }
    fn error(&self, e: rdkafka::error::KafkaError, reason: &str) {
        eprintln!("{:8.3} ERROR {e} {reason}", self.0.elapsed().as_secs_f64());
    }
}
impl rdkafka::producer::ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            if self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                eprintln!("delivery error {e}");
            }
        }
    }
}
fn main() -> anyhow::Result<()> {
    let t = cdrs::tansu::TansuProcess::start(std::path::Path::new("/work/main/.tools/bin/tansu"))?;
    let b = t.brokers().to_string();
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Runtime::new()?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &b).create()?;
    let variants: Vec<(&str, Vec<(&str, &str)>, u8)> = vec![
        ("bare+header", vec![], 1),
        (
            "idem+header",
            vec![("enable.idempotence", "true"), ("acks", "all")],
            1,
        ),
        ("bare+header", vec![], 1),
        (
            "idem+header",
            vec![("enable.idempotence", "true"), ("acks", "all")],
            1,
        ),
        ("bare", vec![], 0),
        ("bare+header", vec![], 1),
        ("bare+pad40", vec![], 2),
        ("bare+consthdr", vec![], 3),
    ];
    let mk = |name: &str| {
        rt.block_on(admin.create_topics(
            &[NewTopic::new(name, 6, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
    };
    mk("in")?;
    {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("linger.ms", "5")
            .create()?;
        let v = vec![b'x'; 200];
        for i in 0..n {
            let k = format!("client-{}", i % 1000);
            let mut r = BaseRecord::to("in").key(k.as_bytes()).payload(&v[..]);
            loop {
                match p.send(r) {
                    Ok(()) => break,
                    Err((_, x)) => {
                        r = x;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60))?;
    }
    for (i, (name, opts, header)) in variants.iter().enumerate() {
        let out = format!("out{i}");
        mk(&out)?;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &b)
            .set("group.id", format!("g{i}"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("session.timeout.ms", "6000")
            .set("max.poll.interval.ms", "6000");
        if std::env::var("QB").is_ok() {
            cfg.set("fetch.queue.backoff.ms", std::env::var("QB").unwrap());
        }
        let c: BaseConsumer = cfg.create()?;
        c.subscribe(&["in"])?;
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &b).set("linger.ms", "5");
        for (k, v) in opts {
            pc.set(*k, *v);
        }
        let p: ThreadedProducer<Ctx> =
            pc.create_with_context(Ctx(Instant::now(), Default::default()))?;
        let (bb, oo) = (b.clone(), out.clone());
        let watcher = std::thread::spawn(move || -> f64 {
            let w: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bb)
                .set("group.id", format!("w-{oo}"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..6 {
                tpl.add_partition_offset(&oo, p, rdkafka::Offset::Beginning)
                    .unwrap();
            }
            w.assign(&tpl).unwrap();
            let mut got = 0u64;
            let (mut f, mut l) = (None, None);
            let mut prev = Instant::now();
            let mut gaps = vec![];
            while got < n {
                if let Some(m) = w.poll(Duration::from_millis(100)) {
                    m.unwrap();
                    got += 1;
                    let now = Instant::now();
                    let g = now - prev;
                    prev = now;
                    if got > 1 && g > Duration::from_millis(50) {
                        gaps.push((got, g.as_millis()));
                    }
                    if got == n / 10 {
                        f = Some(Instant::now());
                    }
                    if got == n * 9 / 10 {
                        l = Some(Instant::now());
                    }
                }
            }
            eprintln!("GAPS {oo} gaps {gaps:?}");
            0.8 * n as f64 / (l.unwrap() - f.unwrap()).as_secs_f64()
        });
        let mut copied = 0u64;
        let mut start = None;
        let mut id = String::new();
        while copied < n {
            let Some(m) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            start.get_or_insert_with(Instant::now);
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&out);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            let mut pad;
            if let Some(v) = m.payload() {
                if *header == 2 {
                    pad = v.to_vec();
                    pad.extend_from_slice(&[b'y'; 40]);
                    rec = rec.payload(unsafe { std::mem::transmute::<&[u8], &[u8]>(&pad[..]) });
                } else {
                    rec = rec.payload(v);
                }
            }
            if *header == 3 {
                rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                    rdkafka::message::Header {
                        key: "k",
                        value: Some(b"x"),
                    },
                ));
            }
            if *header == 1 {
                use std::fmt::Write;
                id.clear();
                let _ = write!(id, "{}/{}/{}", m.topic(), m.partition(), m.offset());
                rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                    rdkafka::message::Header {
                        key: "cdrs-idempotency-key",
                        value: Some(id.as_bytes()),
                    },
                ));
            }
            let mut rec = rec;
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            copied += 1;
        }
        p.flush(Duration::from_secs(60))?;
        let s = start.unwrap().elapsed().as_secs_f64();
        println!(
            "{name:24} copy {:>9.0} rec/s ({s:.2}s)  watched {:>9.0} rec/s",
            n as f64 / s,
            watcher.join().unwrap()
        );
    }
    Ok(())
}
