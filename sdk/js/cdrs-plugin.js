/**
 * Helpers for CDRS plugins written in JavaScript (componentize-js guests).
 *
 * A plugin receives each batch flat (see `batch` in sdk/wit/plugin.wit): a
 * table of 40-byte record entries, a table of 16-byte header entries and one
 * `data` buffer holding every key, value and header. This module reads that
 * layout in place and hands out {@link Record} objects:
 *
 *     import { records } from 'cdrs-plugin';
 *
 *     for (const r of records(batch)) {
 *       r.offset       // number: Kafka offset (exact below 2^53; r.offsetBig is the BigInt)
 *       r.timestampMs  // number | null: ms since the Unix epoch
 *       r.key          // Uint8Array | null (an empty key is a 0-length array)
 *       r.value        // Uint8Array | null (routers: only with needsValue)
 *       r.headers      // Array<[string, Uint8Array | null]>, in record order
 *       r.header('h')  // Uint8Array | null: first header keyed 'h'; null if absent or null
 *     }
 *
 * It mirrors the Rust SDK reader (sdk/rust/src/layout.rs) and the Python
 * helper (sdk/python/cdrs_plugin.py): `View`, `Record`, `Tables` (a writer,
 * for tests), plus constructors for decisions and verdicts and a strict JSON
 * config loader. It imports nothing, so it runs under plain Node too (unit
 * tests); inside a plugin, `build.sh` bundles it in (`import ... from
 * 'cdrs-plugin'`).
 *
 * How componentize-js (0.23) maps the WIT types, seen from the plugin:
 *
 * - exports are camelCase functions of the entry module: `init`,
 *   `updateTargets`, `route`, `filter`; record fields are camelCase too
 *   (`needsValue`, `queueDepth`, `cpuPermille`, `latencyEwmaUs`, ...);
 * - `u8`..`u32`, `s32`, `u16` are Numbers; `u64`/`s64` are BigInts
 *   (`updateTargets(version: bigint, ...)`, host `nowMs(): bigint`);
 * - `list<u8>` arrives as a Uint8Array (its own buffer); returning one,
 *   a Uint8Array (or a plain array of bytes) is accepted;
 * - `option<T>`: none arrives as `undefined`; returning, `null` or
 *   `undefined` are both none;
 * - enums are strings (`'healthy'`, `'degraded'`, `'down'`);
 * - variants are `{ tag: 'kebab-case-name', val }` (`{tag: 'dead-letter',
 *   val: 'why'}`, `{tag: 'route-many', val: [0, 2]}`, `{tag: 'default'}`);
 * - `result<T, string>`: return T for ok; **throw a string** for err. Throwing
 *   anything else (an Error object, a number) traps the instance ("expected a
 *   string"), so wrap `init` bodies with {@link errorText}:
 *   `catch (e) { throw errorText(e); }`.
 *
 * @module cdrs-plugin
 */

/** Bytes per entry of the record table. */
export const RECORD_BYTES = 40;
/** Bytes per entry of the header table. */
export const HEADER_BYTES = 16;
/** Length that marks an absent key or value, or a null header value. */
export const ABSENT = 0xffffffff;
/** Timestamp that marks a record without one (i64 min), as a BigInt. */
export const NO_TIMESTAMP = -(2n ** 63n);

const EMPTY = new Uint8Array(0);
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** UTF-8 bytes of `s`. */
export function utf8(s) {
  return utf8Encoder.encode(s);
}

/** `bytes` decoded as UTF-8; "" if they are not valid UTF-8 (as in the Rust SDK). */
export function fromUtf8(bytes) {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return '';
  }
}

// Header names asked for with header()/hasHeader(), encoded once.
const nameCache = new Map();
function nameBytes(name) {
  let b = nameCache.get(name);
  if (b === undefined) {
    b = utf8Encoder.encode(name);
    if (nameCache.size > 256) nameCache.clear();
    nameCache.set(name, b);
  }
  return b;
}

// The tables as u32 words: typed-array indexing is the cheapest read in
// StarlingMonkey's interpreter (a DataView call costs several times more).
// Wasm and every Node platform CDRS runs on are little-endian, like the
// layout; a big-endian host would get a byte-swapped copy.
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

function words(bytes) {
  const n = bytes.length >>> 2;
  if (LITTLE_ENDIAN && (bytes.byteOffset & 3) === 0) return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Uint32Array(n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * 4, true);
  return out;
}

function sameBytes(a, data, start, len) {
  if (a.length !== len) return false;
  for (let i = 0; i < len; i++) if (a[i] !== data[start + i]) return false;
  return true;
}

/**
 * A batch read in place. `view.length`, `view.get(i)`, `for (const r of view)`
 * (an indexed loop over `get(i)` is a little faster than `for...of`).
 *
 * The record count is `records.length / 40`, rounded down (a trailing partial
 * entry is ignored), like the Rust reader; the host always sends exactly
 * `batch.count` entries.
 */
export class View {
  /**
   * @param {Uint8Array} records the record table (40 bytes per record)
   * @param {Uint8Array} headers the header table (16 bytes per header)
   * @param {Uint8Array} data every key, value and header byte
   */
  constructor(records, headers, data) {
    this.records = records;
    this.headers = headers;
    this.data = data;
    this.r32 = words(records);
    this.h32 = words(headers);
    /** Number of records. */
    this.length = Math.floor(records.length / RECORD_BYTES);
  }

  /** The record at `i` (0-based), or null. @returns {Record | null} */
  get(i) {
    return i >= 0 && i < this.length && i === Math.floor(i) ? new Record(this, i * 10) : null;
  }

  /** The records in order. @returns {Iterator<Record>} */
  [Symbol.iterator]() {
    let i = 0;
    const v = this;
    return {
      next() {
        return i < v.length ? { value: new Record(v, 10 * i++), done: false } : { value: undefined, done: true };
      },
      [Symbol.iterator]() {
        return this;
      },
    };
  }

  /** The records in order, as an array. @returns {Record[]} */
  toArray() {
    const out = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = new Record(this, i * 10);
    return out;
  }

  /** `data[start, start + len)`, null for ABSENT, empty if out of range. */
  bytes(start, len) {
    if (len === ABSENT) return null;
    const end = start + len;
    return end > this.data.length ? EMPTY : this.data.subarray(start, end);
  }

  /** [first, end) of a record's header entries as u32-word indexes, or [0, 0] if out of range. */
  headerRange(e) {
    const first = this.r32[e + 8] * 4;
    const end = first + this.r32[e + 9] * 4;
    return end > this.h32.length ? [0, 0] : [first, end];
  }
}

/**
 * A `View` over a batch as componentize-js passes it (`{topic, partition,
 * count, records, headers, data}`), or anything with those three byte fields.
 * @returns {View}
 */
export function view(batch) {
  return new View(batch.records, batch.headers, batch.data);
}

/** The records of `batch` in order. @returns {Record[]} */
export function records(batch) {
  return view(batch).toArray();
}

/**
 * One record of a batch. Fields are read from the tables on access (nothing
 * is decoded up front); `key`, `value` and header values are views into the
 * batch's `data` (no copy), valid for as long as you keep them.
 */
export class Record {
  /** @param {View} v @param {number} e index of the entry's first u32 word */
  constructor(v, e) {
    this.v = v;
    this.e = e;
  }

  /** Kafka offset of the record in its partition, as a Number (exact below 2^53). */
  get offset() {
    const r = this.v.r32;
    return (r[this.e + 1] | 0) * 4294967296 + r[this.e];
  }

  /** Kafka offset as a BigInt (the exact s64). */
  get offsetBig() {
    const r = this.v.r32;
    return (BigInt(r[this.e + 1] | 0) << 32n) + BigInt(r[this.e]);
  }

  /** Record timestamp, ms since the Unix epoch, as a Number; null if none. */
  get timestampMs() {
    const r = this.v.r32;
    const hi = r[this.e + 3] | 0;
    const lo = r[this.e + 2];
    if (hi === -2147483648 && lo === 0) return null;
    return hi * 4294967296 + lo;
  }

  /** The record key; null if it has none (an empty key is a 0-length array). */
  get key() {
    const r = this.v.r32;
    return this.v.bytes(r[this.e + 4], r[this.e + 5]);
  }

  /** The payload; null if none. Routers get it only with `needsValue: true`. */
  get value() {
    const r = this.v.r32;
    return this.v.bytes(r[this.e + 6], r[this.e + 7]);
  }

  /**
   * The headers in record order as `[key, value]`; a null header has value
   * null. Routers see only the headers they asked for in `init`.
   * @returns {Array<[string, Uint8Array | null]>}
   */
  get headers() {
    const v = this.v;
    const h = v.h32;
    const [first, end] = v.headerRange(this.e);
    const out = [];
    for (let at = first; at < end; at += 4) {
      const k = v.bytes(h[at], h[at + 1]) || EMPTY;
      out.push([fromUtf8(k), v.bytes(h[at + 2], h[at + 3])]);
    }
    return out;
  }

  /** Word index in the header table of the first header keyed exactly `name`, or -1. */
  findHeader(name) {
    const want = nameBytes(name);
    const v = this.v;
    const h = v.h32;
    const data = v.data;
    const [first, end] = v.headerRange(this.e);
    for (let at = first; at < end; at += 4) {
      const ks = h[at];
      const kl = h[at + 1];
      if (kl !== ABSENT && ks + kl <= data.length) {
        if (sameBytes(want, data, ks, kl)) return at;
        // An invalid UTF-8 key reads as "" (as in the Rust SDK).
        if (want.length === 0 && fromUtf8(data.subarray(ks, ks + kl)) === '') return at;
      } else if (want.length === 0) {
        return at;
      }
    }
    return -1;
  }

  /**
   * The value of the first header whose key is exactly `name`; null if there
   * is none or that first one is null.
   * @returns {Uint8Array | null}
   */
  header(name) {
    const at = this.findHeader(name);
    if (at < 0) return null;
    const h = this.v.h32;
    return this.v.bytes(h[at + 2], h[at + 3]);
  }

  /** Whether some header has exactly the key `name` (a null value counts). */
  hasHeader(name) {
    return this.findHeader(name) >= 0;
  }

  /** The record's key, value and headers as a `rewrite` (for a transform). */
  toRewrite() {
    return {
      key: this.key,
      value: this.value,
      headers: this.headers.map(([key, value]) => ({ key, value })),
    };
  }
}

/**
 * A batch being written (tests and tools): `push` records, then read them
 * back with `view()` or pass `batch()` to a plugin's `route`/`filter`.
 */
export class Tables {
  constructor() {
    this.count = 0;
    this.recordBytes = [];
    this.headerBytes = [];
    this.dataBytes = [];
  }

  append(bytes) {
    const start = this.dataBytes.length;
    if (bytes === null || bytes === undefined) return [start, ABSENT];
    const b = typeof bytes === 'string' ? utf8(bytes) : bytes;
    for (const x of b) this.dataBytes.push(x);
    return [start, b.length];
  }

  /**
   * Append one record.
   * @param {number | bigint} offset
   * @param {number | bigint | null} timestampMs
   * @param {Uint8Array | string | null} key (a string is its UTF-8 bytes)
   * @param {Uint8Array | string | null} value
   * @param {Array<[string, Uint8Array | string | null]>} headers
   */
  push(offset, timestampMs = null, key = null, value = null, headers = []) {
    const first = this.headerBytes.length / HEADER_BYTES;
    for (const [hk, hv] of headers) {
      const entry = new DataView(new ArrayBuffer(HEADER_BYTES));
      const [ks, kl] = this.append(utf8(hk));
      const [vs, vl] = this.append(hv);
      [ks, kl, vs, vl].forEach((n, i) => entry.setUint32(i * 4, n, true));
      this.headerBytes.push(...new Uint8Array(entry.buffer));
    }
    const n = this.headerBytes.length / HEADER_BYTES - first;
    const [ks, kl] = this.append(key);
    const [vs, vl] = this.append(value);
    const entry = new DataView(new ArrayBuffer(RECORD_BYTES));
    entry.setBigInt64(0, BigInt(offset), true);
    entry.setBigInt64(8, timestampMs === null ? NO_TIMESTAMP : BigInt(timestampMs), true);
    [ks, kl, vs, vl, first, n].forEach((x, i) => entry.setUint32(16 + i * 4, x, true));
    this.recordBytes.push(...new Uint8Array(entry.buffer));
    this.count += 1;
  }

  /** A reader over what was written. */
  view() {
    const b = this.batch();
    return new View(b.records, b.headers, b.data);
  }

  /** A `batch` as the host passes it. */
  batch(topic = 'topic', partition = 0) {
    return {
      topic,
      partition,
      count: this.count,
      records: Uint8Array.from(this.recordBytes),
      headers: Uint8Array.from(this.headerBytes),
      data: Uint8Array.from(this.dataBytes),
    };
  }
}

// ---------------------------------------------------------------------------
// Decisions and verdicts: the variant values componentize-js expects. The
// payload-free ones are shared frozen objects (the host only reads them).

const DROP = Object.freeze({ tag: 'drop' });
const KEEP = Object.freeze({ tag: 'keep' });
const DEFAULT = Object.freeze({ tag: 'default' });

/** Router decisions (`decision`). Targets are indexes into the last `updateTargets` list. */
export const Decision = Object.freeze({
  /** Deliver to target `index`. */
  route: (index) => ({ tag: 'route', val: index }),
  /** Deliver to each of `indexes` (fan-out). */
  routeMany: (indexes) => ({ tag: 'route-many', val: Array.from(indexes) }),
  /** Discard the record (its offset counts as handled). */
  drop: () => DROP,
  /** Send the record to the dead-letter topic with `reason`. */
  deadLetter: (reason) => ({ tag: 'dead-letter', val: String(reason) }),
  /** Let the host's built-in policy choose (least loaded healthy target). */
  default: () => DEFAULT,
});

/** Filter verdicts (`verdict`). */
export const Verdict = Object.freeze({
  /** Pass the record on unchanged. */
  keep: () => KEEP,
  /** Discard the record. */
  drop: () => DROP,
  /** Send the record to the dead-letter topic with `reason`. */
  deadLetter: (reason) => ({ tag: 'dead-letter', val: String(reason) }),
  /**
   * Pass the record on with key, value and headers replaced wholesale.
   * @param {{key?: Uint8Array|null, value?: Uint8Array|null,
   *          headers?: Array<[string, Uint8Array|string|null] | {key: string, value: Uint8Array|null}>}} rewrite
   *   null/absent key or value: none; a string header value is its UTF-8 bytes.
   */
  transform: ({ key = null, value = null, headers = [] }) => ({
    tag: 'transform',
    val: { key, value, headers: headers.map(toHeader) },
  }),
});

function toHeader(h) {
  const [key, value] = Array.isArray(h) ? h : [h.key, h.value];
  return { key: String(key), value: typeof value === 'string' ? utf8(value) : (value ?? null) };
}

/**
 * `record` rewritten with header `name: value` appended (for a transform),
 * as in the Rust SDK's `stamp`.
 * @param {Record} record
 * @param {string} name
 * @param {Uint8Array | string} value (a string is its UTF-8 bytes)
 */
export function stamp(record, name, value) {
  const rw = record.toRewrite();
  rw.headers.push({ key: name, value: typeof value === 'string' ? utf8(value) : value });
  return { tag: 'transform', val: rw };
}

/**
 * The string to throw from an export that returns `result<_, string>`:
 * componentize-js only turns a thrown *string* into `err`, anything else
 * traps the instance. `errorText(new Error('x'))` is `'x'`.
 */
export function errorText(e) {
  if (typeof e === 'string') return e;
  if (e && typeof e.message === 'string') return e.message;
  return String(e);
}

// ---------------------------------------------------------------------------
// Config

/** The plugin's config is not acceptable; `init` should fail with it. */
export class ConfigError extends Error {}

/**
 * Parse the `config` string of `init`: a JSON object whose keys are all in
 * `allowed`. An empty or all-whitespace string is `{}`.
 *
 * Stricter than JSON.parse, so that every language's example accepts the
 * same configs: integers (number literals without `.`, `e` or `E`) arrive as
 * **BigInt**, other numbers as Number, so `1` and `1.0` can be told apart
 * (serde_json and Python's json tell them apart too); a duplicate key is an
 * error. The result has a null prototype.
 *
 * @param {string} text
 * @param {Iterable<string>} allowed
 * @returns {Object<string, *>}
 * @throws {ConfigError} invalid JSON, not an object, duplicate or unknown key
 */
export function loadConfig(text, allowed) {
  if (text.trim() === '') return Object.create(null);
  const obj = parseStrictJson(text);
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new ConfigError('config must be a JSON object');
  }
  const ok = new Set(allowed);
  const unknown = Object.keys(obj).filter((k) => !ok.has(k)).sort();
  if (unknown.length) {
    throw new ConfigError(
      `unknown config key(s) ${JSON.stringify(unknown)}; allowed: ${JSON.stringify([...ok].sort())}`,
    );
  }
  return obj;
}

/** Describes a config value for an error message. */
export function describe(v) {
  if (typeof v === 'bigint') return v.toString();
  if (v === undefined) return 'nothing';
  return JSON.stringify(v);
}

/**
 * RFC 8259 JSON, with integers as BigInt and duplicate keys rejected.
 * @throws {ConfigError}
 */
export function parseStrictJson(text) {
  let i = 0;
  const fail = (what) => {
    throw new ConfigError(`config is not valid JSON: ${what} at character ${i}`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const string = () => {
    i++; // opening quote
    let out = '';
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return out;
      }
      if (c < 0x20) fail('control character in string');
      if (c !== 0x5c) {
        out += text[i++];
        continue;
      }
      const e = text[i + 1];
      i += 2;
      const simple = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }[e];
      if (simple !== undefined) {
        out += simple;
      } else if (e === 'u') {
        const hex = text.slice(i, i + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape');
        out += String.fromCharCode(parseInt(hex, 16));
        i += 4;
      } else {
        fail('bad escape');
      }
    }
  };
  const number = () => {
    const m = /^-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i));
    if (!m) fail('bad number');
    i += m[0].length;
    return m[1] === undefined && m[2] === undefined ? BigInt(m[0]) : Number(m[0]);
  };
  const value = (depth) => {
    if (depth > 128) fail('nesting too deep');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj = Object.create(null);
      const seen = new Set();
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = string();
        if (seen.has(k)) throw new ConfigError(`duplicate config key ${JSON.stringify(k)}`);
        seen.add(k);
        ws();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        obj[k] = value(depth + 1);
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') {
          i++;
          return obj;
        } else fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const arr = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === ']') {
          i++;
          return arr;
        } else fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    if (c === '-' || (c >= '0' && c <= '9')) return number();
    for (const [lit, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return v;
      }
    }
    return fail('unexpected character');
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}
