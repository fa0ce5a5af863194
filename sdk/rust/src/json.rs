//! Reading one field of a JSON document without building the document.
//!
//! `serde_json::from_slice::<Value>` allocates a map per object and a string
//! per key; a filter that looks at one field pays that for every record.
//! [`lookup`] scans the document once, byte by byte, without building
//! anything: keys are compared as raw bytes, values off the path are skipped
//! (strings to their closing quote, containers to their matching bracket),
//! and only the value found is handed to `serde_json`. The scan still checks
//! the JSON grammar (RFC 8259) of everything it passes — strings without raw
//! control characters and with valid escapes, numbers, `true`/`false`/`null`,
//! commas and colons, brackets that match — so a document that is not JSON
//! is an `Err`. Values off the path are skipped without recursion (they may
//! nest as deep as they like, as `serde_json` skips them); the path is
//! followed at most 128 objects deep and the value found is built by
//! `serde_json`, both with `serde_json`'s recursion limit. Like `serde_json` skipping a value,
//! it does not check that strings are valid UTF-8; unlike it, it refuses a
//! raw control character in any string, not only in the value it builds.
//!
//! ```
//! use cdrs_plugin_sdk::json::lookup;
//! let doc = br#"{"trade":{"side":"buy","qty":5},"type":"fill"}"#;
//! assert_eq!(lookup(doc, &["trade", "side"]).unwrap(), Some("buy".into()));
//! assert_eq!(lookup(doc, &["nope"]).unwrap(), None);
//! assert!(lookup(b"{not json", &["type"]).is_err());
//! ```

pub use serde_json::{Error, Value};

/// The value at `path` (object keys, outermost first) in `doc`: `Ok(None)`
/// if some key on the path is missing or a step is not an object, `Err` if
/// `doc` is not one valid JSON document. With several equal keys in one
/// object the last wins, as in `serde_json::Value`.
///
/// # Errors
/// `doc` is not one JSON document (the error names the byte offset), or the
/// path or the value found nests deeper than 128.
pub fn lookup<S: AsRef<str>>(doc: &[u8], path: &[S]) -> Result<Option<Value>, Error> {
    match lookup_span(doc, path)? {
        Some(span) => serde_json::from_slice(&doc[span]).map(Some),
        None => Ok(None),
    }
}

/// Where the value at `path` is in `doc`, as [`lookup`] finds it, without
/// building it: `doc[span]` is the value's JSON text, checked against the
/// JSON grammar like the rest of the document. With [`equals`], a filter
/// compares a field with a configured value without allocating.
///
/// # Errors
/// `doc` is not one JSON document (the error names the byte offset), or the
/// path nests deeper than 128.
pub fn lookup_span<S: AsRef<str>>(
    doc: &[u8],
    path: &[S],
) -> Result<Option<std::ops::Range<usize>>, Error> {
    let mut s = Scan { b: doc, i: 0 };
    s.ws();
    let found = s.seek(path, 0)?;
    s.ws();
    if s.i != doc.len() {
        return Err(s.err("trailing characters"));
    }
    Ok(found.map(|(from, to)| from..to))
}

/// Whether the JSON text `raw` (one value, as [`lookup_span`] delimits it)
/// equals `v` as `serde_json::Value`s compare: strings without escapes are
/// compared as bytes, `true`, `false` and `null` as words, anything else is
/// parsed first. Text that is not one JSON value equals nothing.
pub fn equals(raw: &[u8], v: &Value) -> bool {
    match (raw, v) {
        ([b'"', inner @ .., b'"'], Value::String(s)) if !inner.contains(&b'\\') => {
            inner == s.as_bytes()
        }
        ([b'"', ..], _) if !v.is_string() => false,
        (b"true", _) => v == &Value::Bool(true),
        (b"false", _) => v == &Value::Bool(false),
        (b"null", _) => v.is_null(),
        _ => serde_json::from_slice::<Value>(raw).is_ok_and(|r| &r == v),
    }
}

/// Length of the run of plain string characters at the start of `s`: up
/// to the first `"`, `\\` or control character (below 0x20). Eight bytes at
/// a time while none of them is one (SWAR: "Bit Twiddling Hacks", Anderson,
/// "Determine if a word has a byte less than n" and "… equal to n"), which
/// took skipping a 200-byte trade record from about 250 to 190 ns natively.
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let special = |w: u64| {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * b'"' as u64);
        let quote = q.wrapping_sub(ONES) & !q;
        let b = w ^ (ONES * b'\\' as u64);
        let backslash = b.wrapping_sub(ONES) & !b;
        (below_space | quote | backslash) & HIGH != 0
    };
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if special(w) {
            break;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(s.len() - i)
}

/// Nesting limit, as `serde_json`'s recursion limit.
const MAX_DEPTH: usize = 128;

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn err(&self, what: &str) -> Error {
        <Error as serde::de::Error>::custom(format_args!("{what} at byte {}", self.i))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Error> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(match c {
                b':' => "expected `:`",
                b'"' => "expected a string",
                _ => "unexpected character",
            }))
        }
    }

    /// Scans one value; when `path` is not empty and the value is an
    /// object, follows it. Returns the byte range of the value at the end
    /// of `path` (the value itself for an empty path).
    fn seek<S: AsRef<str>>(
        &mut self,
        path: &[S],
        depth: usize,
    ) -> Result<Option<(usize, usize)>, Error> {
        let Some((want, rest)) = path.split_first() else {
            let from = self.i;
            self.value()?;
            return Ok(Some((from, self.i)));
        };
        if self.peek() != Some(b'{') {
            self.value()?;
            return Ok(None);
        }
        if depth >= MAX_DEPTH {
            return Err(self.err("recursion limit exceeded"));
        }
        self.i += 1;
        let mut found = None;
        self.members(|s| {
            let hit = s.key_is(want.as_ref())?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            if hit {
                found = s.seek(rest, depth + 1)?;
            } else {
                s.value()?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The members of an object whose `{` was read, up to its `}`; `member`
    /// reads one `"key": value`.
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            member(self)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    /// Reads an object key and says whether it is `want` (raw bytes; a key
    /// with escapes is decoded first).
    fn key_is(&mut self, want: &str) -> Result<bool, Error> {
        let from = self.i;
        let escaped = self.string()?;
        let raw = &self.b[from + 1..self.i - 1];
        if !escaped {
            return Ok(raw == want.as_bytes());
        }
        let key: String = serde_json::from_slice(&self.b[from..self.i])?;
        Ok(key == want)
    }

    /// Skips one value, checking its grammar. Iterative, with the closing
    /// brackets on a stack: a skipped value may nest arbitrarily deep
    /// (as `serde_json` skips one) without deepening the call stack.
    fn value(&mut self) -> Result<(), Error> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open.push(b'}');
                        self.member_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => return Err(self.err("expected a value")),
                None => return Err(self.err("EOF while parsing a value")),
            }
            // A value ended: close what it ended, or go on to the next one.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                        if close == b'}' {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.i += 1;
                        open.pop();
                    }
                    _ if close == b'}' => return Err(self.err("expected `,` or `}`")),
                    _ => return Err(self.err("expected `,` or `]`")),
                }
            }
        }
    }

    /// `"key" :` and the whitespace after it.
    fn member_key(&mut self) -> Result<(), Error> {
        self.string()?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Error> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - from
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), Error> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    /// Skips a string from its opening quote past its closing one; says
    /// whether it had escapes.
    fn string(&mut self) -> Result<bool, Error> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.err("invalid unicode escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("EOF while parsing a string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The serde-visitor lookup this scanner replaced: the reference its
    /// answers are checked against.
    mod reference {
        use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
        use serde::Deserialize;
        use serde_json::{Error, Value};
        use std::fmt;

        /// The value at `path` (object keys, outermost first) in `doc`: `Ok(None)`
        /// if some key on the path is missing or a step is not an object, `Err` if
        /// `doc` is not one valid JSON document. With several equal keys in one
        /// object the last wins, as in `serde_json::Value`.
        pub fn oracle<S: AsRef<str>>(doc: &[u8], path: &[S]) -> Result<Option<Value>, Error> {
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
    }

    /// Valid and broken documents, and every one-byte change of a few
    /// valid ones to a JSON-significant byte: the scanner answers exactly
    /// as the reference (the same value, or an error for both).
    #[test]
    fn answers_as_the_reference_on_valid_and_broken_documents() {
        let docs: &[&[u8]] = &[
            br#"{"type":"fill","client":"c-17","qty":5,"px":101.25,"tags":["a","b"],"m":{"x":null,"y":[{}]}}"#,
            br#" { "type" : "heart\u0062eat" , "a" : [ 1 , -2.5e+3 , true , false , null ] } "#,
            br#"{"t\u0079pe":"x","type":{"type":"inner"},"e":"\"\\\/\b\f\n\r\t"}"#,
            br#"[{"type":"not at the top"}]"#,
            br#""type""#,
            b"0",
            b"-0.0e0",
            br#"{"a":{"b":{"c":{"type":1}}}}"#,
        ];
        let paths: &[&[&str]] = &[
            &["type"],
            &["a"],
            &["m", "y"],
            &["a", "b", "c", "type"],
            &[],
        ];
        let alphabet = b"{}[]\":,\\ 0123456789eE.-+tfnu\x01\x7f";
        let check = |doc: &[u8]| {
            for path in paths {
                let (got, want) = (lookup(doc, path), reference::oracle(doc, path));
                match (&got, &want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(g, w, "{:?} {path:?}", String::from_utf8_lossy(doc))
                    }
                    (Err(_), Err(_)) => {}
                    // Stricter than the reference, which lets serde_json
                    // skip strings (and read keys) without checking for raw
                    // control characters, which RFC 8259 does not allow.
                    (Err(_), Ok(_)) if doc.contains(&0x01) => {}
                    _ => panic!(
                        "{:?} {path:?}: scanner {got:?}, reference {want:?}",
                        String::from_utf8_lossy(doc)
                    ),
                }
            }
        };
        for doc in docs {
            check(doc);
            for i in 0..doc.len() {
                check(&doc[..i]);
                for &c in alphabet {
                    let mut d = doc.to_vec();
                    d[i] = c;
                    check(&d);
                }
            }
        }
        let deep = |n: usize| [vec![b'['; n], vec![b']'; n]].concat();
        check(&deep(127));
        check(&deep(128));
        check(&deep(129));
        let deep_obj = |n: usize| {
            let mut d = br#"{"a":"#.repeat(n);
            d.extend_from_slice(b"1");
            d.extend(std::iter::repeat_n(b'}', n));
            d
        };
        // Well within and well past the recursion limit (at the limit the
        // two count the path's levels apart from the value's).
        for n in [100, 200] {
            for path in [&["a"][..], &["a"; 200][..]] {
                let doc = deep_obj(n);
                assert_eq!(
                    lookup(&doc, path).is_err(),
                    reference::oracle(&doc, path).is_err(),
                    "depth {n}, path of {}",
                    path.len()
                );
            }
        }
    }

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
    fn equals_compares_as_values_do() {
        let doc = br#"{"s":"fill","e":"fi\u006cl","n":1,"f":1.0,"b":true,"z":null,"o":{"a":[1]}}"#;
        let full: Value = serde_json::from_slice(doc).unwrap();
        let candidates = [
            json!("fill"),
            json!("fil"),
            json!(1),
            json!(1.0),
            json!(true),
            json!(false),
            Value::Null,
            json!({"a": [1]}),
            json!("true"),
        ];
        for key in ["s", "e", "n", "f", "b", "z", "o"] {
            let span = lookup_span(doc, &[key]).unwrap().unwrap();
            for c in &candidates {
                assert_eq!(
                    equals(&doc[span.clone()], c),
                    &full[key] == c,
                    "{key} vs {c}"
                );
            }
        }
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
