/**
 * example-filter (JavaScript): key, size and header rules with an optional
 * stamp — the portable example filter of sdk/example-policy.md, giving the
 * same verdicts as the Rust, Python and C examples (tests/conformance checks it).
 *
 * Build:  sdk/js/build.sh plugins/example-filter-js filter OUT.wasm
 *
 * Config (JSON object; empty string = {}):
 *   require_key      bool, default false
 *   max_value_bytes  integer 0..=18446744073709551615 or null, default null
 *   deny_header      string or null, default null
 *   stamp_header     string or null, default null
 *
 * Per record, the first rule that applies:
 *   1. require_key and no key                 -> dead-letter "missing key"
 *   2. value longer than max_value_bytes      -> dead-letter "value is L bytes, over max_value_bytes M"
 *   3. a header keyed deny_header (any value) -> drop
 *   4. stamp_header set                       -> transform: same key, value, headers + (stamp_header, "example-filter")
 *   5.                                        -> keep
 */
import { ConfigError, Verdict, describe, errorText, loadConfig, stamp, view } from 'cdrs-plugin';

/** Value of the header appended with `stamp_header`. */
export const STAMP_VALUE = 'example-filter';
const U64_MAX = 2n ** 64n - 1n;

function optionalString(obj, key) {
  const v = key in obj ? obj[key] : null;
  if (v !== null && typeof v !== 'string') throw new ConfigError(`${key} must be a string or null, got ${describe(v)}`);
  return v;
}

/** Parse and validate the `init` config; throws ConfigError. */
export function parseConfig(text) {
  const obj = loadConfig(text, ['require_key', 'max_value_bytes', 'deny_header', 'stamp_header']);
  const requireKey = 'require_key' in obj ? obj.require_key : false;
  if (typeof requireKey !== 'boolean') {
    throw new ConfigError(`require_key must be a boolean, got ${describe(requireKey)}`);
  }
  // Integers arrive as BigInt (loadConfig); kept as BigInt, compared exactly.
  const maxValueBytes = 'max_value_bytes' in obj ? obj.max_value_bytes : null;
  if (maxValueBytes !== null && (typeof maxValueBytes !== 'bigint' || maxValueBytes < 0n || maxValueBytes > U64_MAX)) {
    throw new ConfigError(`max_value_bytes must be an integer >= 0 or null, got ${describe(maxValueBytes)}`);
  }
  return {
    requireKey,
    maxValueBytes,
    denyHeader: optionalString(obj, 'deny_header'),
    stampHeader: optionalString(obj, 'stamp_header'),
  };
}

const KEEP = Verdict.keep();
const DROP = Verdict.drop();
const MISSING_KEY = Verdict.deadLetter('missing key');

/** The policy, independent of the component glue. */
export class Filter {
  constructor(config) {
    this.config = config;
  }

  /** The verdict for one record (a `Record` of cdrs-plugin). */
  verdict(r) {
    const { requireKey, maxValueBytes, denyHeader, stampHeader } = this.config;
    if (requireKey && r.key === null) return MISSING_KEY;
    if (maxValueBytes !== null) {
      const value = r.value;
      // Number > BigInt compares exactly.
      if (value !== null && value.length > maxValueBytes) {
        return Verdict.deadLetter(`value is ${value.length} bytes, over max_value_bytes ${maxValueBytes}`);
      }
    }
    if (denyHeader !== null && r.hasHeader(denyHeader)) return DROP;
    if (stampHeader !== null) return stamp(r, stampHeader, STAMP_VALUE);
    return KEEP;
  }

  filter(batch) {
    const v = view(batch);
    const out = new Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = this.verdict(v.get(i));
    return out;
  }
}

let filterState = null;

/** `init(config) -> result<_, string>`: throw a string for err. */
export function init(config) {
  try {
    filterState = new Filter(parseConfig(config));
  } catch (e) {
    throw `example-filter: ${errorText(e)}`;
  }
}

/** `filter(batch) -> list<verdict>`: one verdict per record, in order. */
export function filter(batch) {
  if (filterState === null) throw new Error('example-filter: called before init');
  return filterState.filter(batch);
}
