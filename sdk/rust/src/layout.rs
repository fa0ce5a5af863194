//! The packed layout of a batch (`cdrs:plugin` `batch`): a table of 40-byte
//! record entries, a table of 16-byte header entries, and one byte buffer
//! with every key, value and header. [`Tables`] writes it (the host and test
//! batches use it), [`View`] and [`Record`] read it in place.
//!
//! The layout is documented on `batch` in `sdk/wit/plugin.wit`; this module
//! is its one implementation in Rust. All integers are little-endian.

/// Bytes per entry of the record table.
pub const RECORD_BYTES: usize = 40;
/// Bytes per entry of the header table.
pub const HEADER_BYTES: usize = 16;
/// Length that marks an absent key or value, or a null header value.
pub const ABSENT: u32 = u32::MAX;
/// Timestamp that marks a record without one.
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// Codes of the packed answers (`verdicts.codes`, `decisions.targets`,
/// since contract 1.1), shared by the SDK that writes them and the host
/// that reads them.
pub mod codes {
    /// `verdicts.codes`: pass the record on unchanged.
    pub const KEEP: u8 = 0;
    /// `verdicts.codes`: discard the record.
    pub const DROP: u8 = 1;
    /// `verdicts.codes`: the next entry of `verdicts.rewrites` replaces it.
    pub const TRANSFORM: u8 = 2;
    /// `verdicts.codes`: dead-letter with the next entry of `verdicts.reasons`.
    pub const DEAD_LETTER: u8 = 3;

    /// `decisions.targets`: the host's fallback policy chooses.
    pub const ROUTE_DEFAULT: u32 = u32::MAX;
    /// `decisions.targets`: discard the record.
    pub const ROUTE_DROP: u32 = u32::MAX - 1;
    /// `decisions.targets`: dead-letter with the next `decisions.reasons`.
    pub const ROUTE_DEAD_LETTER: u32 = u32::MAX - 2;
    /// `decisions.targets`: fan out to the next entry of `decisions.many`.
    pub const ROUTE_MANY: u32 = u32::MAX - 3;
    /// Entries below this are target indexes.
    pub const FIRST_CODE: u32 = ROUTE_MANY;
}

/// A batch being written: record table, header table, data buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub count: u32,
    pub records: Vec<u8>,
    pub headers: Vec<u8>,
    pub data: Vec<u8>,
}

impl Tables {
    /// Room for `records` records with `data` bytes of keys and values.
    pub fn with_capacity(records: usize, data: usize) -> Tables {
        Tables {
            count: 0,
            records: Vec::with_capacity(records * RECORD_BYTES),
            headers: Vec::new(),
            data: Vec::with_capacity(data),
        }
    }

    /// Appends one record.
    ///
    /// Panics if the data buffer would pass 4 GiB (a batch never comes near:
    /// plugin memory is capped far below).
    pub fn push<'h>(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let first = (self.headers.len() / HEADER_BYTES) as u32;
        for (k, v) in headers {
            let (ks, kl) = self.append(Some(k.as_bytes()));
            let (vs, vl) = self.append(v);
            for n in [ks, kl, vs, vl] {
                self.headers.extend_from_slice(&n.to_le_bytes());
            }
        }
        let n_headers = (self.headers.len() / HEADER_BYTES) as u32 - first;
        let (ks, kl) = self.append(key);
        let (vs, vl) = self.append(value);
        // One 40-byte write per record, not eight growing ones.
        let mut entry = [0u8; RECORD_BYTES];
        entry[0..8].copy_from_slice(&offset.to_le_bytes());
        entry[8..16].copy_from_slice(&timestamp_ms.unwrap_or(NO_TIMESTAMP).to_le_bytes());
        for (i, n) in [ks, kl, vs, vl, first, n_headers].into_iter().enumerate() {
            entry[16 + 4 * i..20 + 4 * i].copy_from_slice(&n.to_le_bytes());
        }
        self.records.extend_from_slice(&entry);
        self.count += 1;
    }

    fn append(&mut self, bytes: Option<&[u8]>) -> (u32, u32) {
        let start = u32::try_from(self.data.len()).expect("batch data under 4 GiB");
        match bytes {
            Some(b) => {
                self.data.extend_from_slice(b);
                (start, b.len() as u32)
            }
            None => (start, ABSENT),
        }
    }

    /// A reader over what was written.
    pub fn view(&self) -> View<'_> {
        View::new(&self.records, &self.headers, &self.data)
    }
}

/// A batch read in place.
#[derive(Clone, Copy)]
pub struct View<'a> {
    records: &'a [u8],
    headers: &'a [u8],
    data: &'a [u8],
}

impl<'a> View<'a> {
    pub fn new(records: &'a [u8], headers: &'a [u8], data: &'a [u8]) -> View<'a> {
        View {
            records,
            headers,
            data,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at `i` (0-based), if any.
    pub fn get(&self, i: usize) -> Option<Record<'a>> {
        let at = i.checked_mul(RECORD_BYTES)?;
        let entry = self.records.get(at..at + RECORD_BYTES)?;
        Some(Record { view: *self, entry })
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Record<'a>> + 'a {
        let view = *self;
        self.records
            .chunks_exact(RECORD_BYTES)
            .map(move |entry| Record { view, entry })
    }

    /// Bytes `start .. start + len` of `data`; `None` for [`ABSENT`]; empty
    /// if out of range (the host never writes such a range).
    fn bytes(&self, start: u32, len: u32) -> Option<&'a [u8]> {
        if len == ABSENT {
            return None;
        }
        let start = start as usize;
        Some(
            self.data
                .get(start..start.saturating_add(len as usize))
                .unwrap_or(&[]),
        )
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One record of a batch; every accessor borrows from the batch.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    view: View<'a>,
    entry: &'a [u8],
}

impl<'a> Record<'a> {
    /// Kafka offset of the record in its partition.
    pub fn offset(&self) -> i64 {
        i64_at(self.entry, 0)
    }

    /// Record timestamp, ms since the Unix epoch, if set.
    pub fn timestamp_ms(&self) -> Option<i64> {
        Some(i64_at(self.entry, 8)).filter(|&t| t != NO_TIMESTAMP)
    }

    /// The record key, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.view
            .bytes(u32_at(self.entry, 16), u32_at(self.entry, 20))
    }

    /// The payload, if any (routers: only with `needs-value`).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.view
            .bytes(u32_at(self.entry, 24), u32_at(self.entry, 28))
    }

    /// The headers in record order as `(key, value)`; a null header has
    /// value `None`. Routers see only the ones they asked for.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let view = self.view;
        let first = (u32_at(self.entry, 32) as usize).saturating_mul(HEADER_BYTES);
        let n = (u32_at(self.entry, 36) as usize).saturating_mul(HEADER_BYTES);
        view.headers
            .get(first..first.saturating_add(n))
            .unwrap_or(&[])
            .chunks_exact(HEADER_BYTES)
            .map(move |h| {
                let key = view.bytes(u32_at(h, 0), u32_at(h, 4)).unwrap_or(&[]);
                (
                    std::str::from_utf8(key).unwrap_or(""),
                    view.bytes(u32_at(h, 8), u32_at(h, 12)),
                )
            })
    }

    /// The value of the first header named `key` (exact match), if present
    /// and not null.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers().find(|(k, _)| *k == key).and_then(|(_, v)| v)
    }
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("offset", &self.offset())
            .field("timestamp_ms", &self.timestamp_ms())
            .field("key", &self.key())
            .field("value_bytes", &self.value().map(<[u8]>::len))
            .field("headers", &self.headers().count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_headers_and_absences() {
        let mut t = Tables::with_capacity(3, 64);
        t.push(
            7,
            Some(1_700),
            Some(b"k1"),
            Some(b"v1"),
            [("a", Some(&b"x"[..])), ("n", None)],
        );
        t.push(8, None, None, None, []);
        t.push(9, Some(-1), Some(b""), Some(b"v3"), [("b", Some(&b""[..]))]);
        let v = t.view();
        assert_eq!(v.len(), 3);
        let r: Vec<Record> = v.iter().collect();
        assert_eq!((r[0].offset(), r[0].timestamp_ms()), (7, Some(1_700)));
        assert_eq!(
            (r[0].key(), r[0].value()),
            (Some(&b"k1"[..]), Some(&b"v1"[..]))
        );
        let hs: Vec<_> = r[0].headers().collect();
        assert_eq!(hs, vec![("a", Some(&b"x"[..])), ("n", None)]);
        assert_eq!(r[0].header("a"), Some(&b"x"[..]));
        assert_eq!(r[0].header("n"), None);
        assert_eq!(
            (r[1].timestamp_ms(), r[1].key(), r[1].value()),
            (None, None, None)
        );
        assert_eq!(r[1].headers().count(), 0);
        assert_eq!(
            (r[2].timestamp_ms(), r[2].key()),
            (Some(-1), Some(&b""[..]))
        );
        assert_eq!(r[2].header("b"), Some(&b""[..]));
        assert!(v.get(3).is_none());
    }

    #[test]
    fn garbage_tables_read_as_empty_not_panic() {
        let records = [0xffu8; RECORD_BYTES * 2 + 3];
        let v = View::new(&records, &[1, 2, 3], b"abc");
        assert_eq!(v.len(), 2);
        for r in v.iter() {
            assert_eq!(r.key(), None);
            assert_eq!(r.headers().count(), 0);
        }
        let mut records = [0u8; RECORD_BYTES];
        records[20] = 200; // key length 200 at start 0: out of range
        let v = View::new(&records, &[], b"abc");
        assert_eq!(v.get(0).unwrap().key(), Some(&[][..]));
    }
}
