//! The host's own record type, owned and independent of rdkafka and of the
//! WIT bindings. Conversions to and from both live in `convert.rs`.

use std::sync::Arc;

/// Prefix of the headers CDRS writes itself (`cdrs-idempotency-key`,
/// `cdrs-dlq-*`, `cdrs-original-*`). A record's own headers with this
/// prefix, in any letter case, are dropped where the record enters CDRS
/// (consumed from Kafka, or rewritten by a filter), so an app server or a
/// dead-letter reader never sees a producer's forgery ahead of CDRS's own.
pub const RESERVED_HEADER_PREFIX: &str = "cdrs-";

/// Whether `key` is a header name only CDRS may write
/// ([`RESERVED_HEADER_PREFIX`], ASCII case-insensitive).
pub fn is_reserved_header(key: &str) -> bool {
    key.len() >= RESERVED_HEADER_PREFIX.len()
        && key.as_bytes()[..RESERVED_HEADER_PREFIX.len()]
            .eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
}

/// One Kafka record as it moves through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record has a timestamp.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers in record order; a `None` value is a null header.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// `topic/partition/offset`: the record's identity, used as idempotency key.
    pub fn id(&self) -> String {
        let mut id = String::with_capacity(self.topic.len() + 24);
        self.write_id(&mut id);
        id
    }

    /// Replaces `out` with [`Record::id`], reusing its allocation (the Kafka
    /// sink writes one per record: `format!` took ~3% of the daemon's CPU
    /// in `cdrs bench`).
    pub fn write_id(&self, out: &mut String) {
        out.clear();
        out.push_str(&self.topic);
        out.push('/');
        out.push_str(itoa::Buffer::new().format(self.partition));
        out.push('/');
        out.push_str(itoa::Buffer::new().format(self.offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_topic_partition_offset_and_write_id_replaces_the_buffer() {
        let r = Record {
            topic: "trades".into(),
            partition: -1,
            offset: 9_223_372_036_854_775_807,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        assert_eq!(r.id(), "trades/-1/9223372036854775807");
        let mut buf = String::from("left over");
        r.write_id(&mut buf);
        assert_eq!(buf, r.id());
    }
}
