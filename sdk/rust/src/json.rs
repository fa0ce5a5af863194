//! Reading one field of a JSON document without building the document.
//!
//! `serde_json::from_slice::<Value>` allocates a map per object and a string
//! per key; a filter that looks at one field pays that for every record.
//! [`lookup`] walks the document once with serde's visitor API, skips what
//! is not on the path (`IgnoredAny`) and builds only the value it finds, while
//! still rejecting a document that is not valid JSON.
//!
//! ```
//! use cdrs_plugin_sdk::json::lookup;
//! let doc = br#"{"trade":{"side":"buy","qty":5},"type":"fill"}"#;
//! assert_eq!(lookup(doc, &["trade", "side"]).unwrap(), Some("buy".into()));
//! assert_eq!(lookup(doc, &["nope"]).unwrap(), None);
//! assert!(lookup(b"{not json", &["type"]).is_err());
//! ```

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
pub use serde_json::{Error, Value};
use std::fmt;

/// The value at `path` (object keys, outermost first) in `doc`: `Ok(None)`
/// if some key on the path is missing or a step is not an object, `Err` if
/// `doc` is not one valid JSON document. With several equal keys in one
/// object the last wins, as in `serde_json::Value`.
pub fn lookup<S: AsRef<str>>(doc: &[u8], path: &[S]) -> Result<Option<Value>, Error> {
    let mut de = serde_json::Deserializer::from_slice(doc);
    let found = Seek(path).deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

struct Seek<'p, S>(&'p [S]);

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for Seek<'_, S> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return Value::deserialize(d).map(Some);
        }
        d.deserialize_any(self)
    }
}

impl<'de, S: AsRef<str>> Visitor<'de> for Seek<'_, S> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (want, rest) = (self.0[0].as_ref(), &self.0[1..]);
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(want))? {
            if hit {
                found = map.next_value_seed(Seek(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, compared with the wanted one as bytes: no allocation
/// when it has no escapes, and no UTF-8 check (serde_json does not check
/// the strings it skips either). Checking each key took ~5% of a
/// `field-filter` call in `cdrs bench`, twice as much in Wasm as natively.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_bytes<E>(self, k: &[u8]) -> Result<bool, E> {
        Ok(k == self.0.as_bytes())
    }

    fn visit_str<E>(self, k: &str) -> Result<bool, E> {
        Ok(k == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nested_fields_like_value_get() {
        let doc = br#"{"a":{"b":[1,2],"c":{"d":null}},"e":"x\"y","a2":1}"#;
        let full: Value = serde_json::from_slice(doc).unwrap();
        for path in [
            &["a", "b"][..],
            &["a", "c", "d"],
            &["e"],
            &["a2"],
            &["a"],
            &["a", "z"],
            &["e", "f"],
        ] {
            let want = path.iter().try_fold(&full, |v, k| v.get(*k)).cloned();
            assert_eq!(lookup(doc, path).unwrap(), want, "{path:?}");
        }
        assert_eq!(
            lookup(br#"{"k\u0065y":1}"#, &["key"]).unwrap(),
            Some(json!(1))
        );
        assert_eq!(lookup(br#"{"k":1,"k":2}"#, &["k"]).unwrap(), Some(json!(2)));
    }

    #[test]
    fn rejects_what_is_not_one_json_document() {
        for bad in [&b"{"[..], b"{\"a\":1} x", b"", b"nope", b"[1,", b"{\"a\":}"] {
            assert!(
                lookup(bad, &["a"]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(lookup(b"[1,2]", &["a"]).unwrap(), None);
        assert_eq!(lookup(b" 3 ", &["a"]).unwrap(), None);
    }
}
