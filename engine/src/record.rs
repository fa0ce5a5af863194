//! The host's own record type, owned and independent of rdkafka and of the
//! WIT bindings. Conversions to and from both live in `convert.rs`.

use std::sync::Arc;

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
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}
