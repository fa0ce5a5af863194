/**
 * example-router (JavaScript): the portable example policy of
 * sdk/example-policy.md, to the bit — weighted power-of-two-choices by
 * capacity and in-flight, sticky per key when configured — with the same
 * decisions as the Rust, Python and C examples (tests/conformance checks it).
 *
 * - Power of two choices: Mitzenmacher, "The Power of Two Choices in
 *   Randomized Load Balancing", IEEE TPDS 12(10), 2001. Two distinct eligible
 *   targets are drawn with xorshift32 (Marsaglia, JSS 8(14), 2003); the record
 *   goes to the one with the lower (inflight + assigned) / (capacity × weight).
 * - Sticky: rendezvous hashing (Thaler & Ravishankar, IEEE/ACM ToN 6(1), 1998)
 *   of the key: score = fmix32(fnv1a32(id ++ 0x00 ++ key)) (FNV-1a 32, then
 *   MurmurHash3's finaliser, since FNV-1a alone mixes its last bytes poorly).
 *
 * Build:  sdk/js/build.sh plugins/example-router-js router OUT.wasm
 *
 * Config (JSON object; empty string = {}):
 *   sticky         bool, default false
 *   sticky_header  string or null, default null
 *   seed           integer 1..=4294967295, default 1 (xorshift32 start state)
 *
 * Besides the component exports (init, updateTargets, route) the module
 * exports the policy pieces for the native tests (sdk/js/test/).
 */
import { ConfigError, Decision, describe, errorText, loadConfig, utf8, view } from 'cdrs-plugin';

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** One xorshift32 step on a u32 state (Number); returns the new state. */
export function xorshift32(x) {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** FNV-1a 32 of `bytes` (Uint8Array), continuing from state `h` (default: the offset basis). */
export function fnv1a32(bytes, h = FNV_OFFSET) {
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], FNV_PRIME);
  return h >>> 0;
}

/** MurmurHash3's 32-bit finaliser (Appleby, 2011) on a u32 (Number); returns a u32. */
export function fmix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Parse and validate the `init` config; throws ConfigError. */
export function parseConfig(text) {
  const obj = loadConfig(text, ['sticky', 'sticky_header', 'seed']);
  const sticky = 'sticky' in obj ? obj.sticky : false;
  if (typeof sticky !== 'boolean') throw new ConfigError(`sticky must be a boolean, got ${describe(sticky)}`);
  const stickyHeader = 'sticky_header' in obj ? obj.sticky_header : null;
  if (stickyHeader !== null && typeof stickyHeader !== 'string') {
    throw new ConfigError(`sticky_header must be a string or null, got ${describe(stickyHeader)}`);
  }
  // Integers arrive as BigInt (loadConfig): 1.0 or 1e0 is not an integer.
  const seed = 'seed' in obj ? obj.seed : 1n;
  if (typeof seed !== 'bigint' || seed < 1n || seed > 4294967295n) {
    throw new ConfigError(`seed must be an integer in 1..=4294967295, got ${describe(seed)}`);
  }
  return { sticky, stickyHeader, seed: Number(seed) };
}

const DEFAULT = Decision.default();

/** The policy's state and per-record choice, independent of the component glue. */
export class Router {
  constructor(config) {
    this.config = config;
    this.rng = config.seed;
    this.targets = [];
    this.assigned = [];
    // Derived from `targets` once per updateTargets, not per record:
    this.eligible = [];
    this.weight = []; // w(i) = f64(capacity) * f64(weight), by target index
    this.stickyPrefix = []; // fnv1a32(utf8(id) ++ 0x00), by entry of `eligible`
    this.routeTo = []; // one shared decision object per target
  }

  next() {
    this.rng = xorshift32(this.rng);
    return this.rng;
  }

  updateTargets(targets) {
    this.targets = targets;
    this.assigned = new Array(targets.length).fill(0);
    this.weight = targets.map((t) => t.capacity * t.weight);
    this.routeTo = targets.map((_, i) => Decision.route(i));
    const usable = [];
    targets.forEach((t, i) => {
      if (t.capacity > 0 && t.weight > 0) usable.push(i);
    });
    const healthy = usable.filter((i) => targets[i].health === 'healthy');
    this.eligible = healthy.length ? healthy : usable.filter((i) => targets[i].health === 'degraded');
    this.stickyPrefix = this.eligible.map((i) => fnv1a32(Uint8Array.of(0), fnv1a32(utf8(targets[i].id))));
  }

  /**
   * The target index for one record (null: no eligible target), counted in
   * `assigned`. `stickyKey` is null unless the router is sticky and the
   * record has a sticky key.
   */
  choose(stickyKey) {
    const eligible = this.eligible;
    const n = eligible.length;
    if (n === 0) return null;
    let target;
    if (stickyKey !== null) {
      // Rendezvous: greatest fmix32(fnv1a32(id ++ 0x00 ++ key)); strict >
      // while walking ascending indexes gives ties to the lower index.
      let bestScore = -1;
      for (let j = 0; j < n; j++) {
        const score = fmix32(fnv1a32(stickyKey, this.stickyPrefix[j]));
        if (score > bestScore) {
          bestScore = score;
          target = eligible[j];
        }
      }
    } else if (n === 1) {
      target = eligible[0];
    } else {
      const p = this.next() % n;
      let q = this.next() % (n - 1);
      if (q >= p) q += 1;
      const a = eligible[p];
      const b = eligible[q];
      const w = this.weight;
      // Integer sum (exact: far below 2^53), then one double division.
      const la = (this.targets[a].inflight + this.assigned[a]) / w[a];
      const lb = (this.targets[b].inflight + this.assigned[b]) / w[b];
      if (la !== lb) target = la < lb ? a : b;
      else if (w[a] !== w[b]) target = w[a] > w[b] ? a : b;
      else target = Math.min(a, b);
    }
    this.assigned[target] += 1;
    return target;
  }

  route(batch) {
    const v = view(batch);
    const out = new Array(v.length);
    const { sticky, stickyHeader } = this.config;
    if (!sticky) {
      for (let i = 0; i < v.length; i++) {
        const t = this.choose(null);
        out[i] = t === null ? DEFAULT : this.routeTo[t];
      }
      return out;
    }
    for (let i = 0; i < v.length; i++) {
      const r = v.get(i);
      const key = stickyHeader !== null ? r.header(stickyHeader) : r.key;
      const t = this.choose(key);
      out[i] = t === null ? DEFAULT : this.routeTo[t];
    }
    return out;
  }
}

// One router per component instance: the host calls init first.
let router = null;

function current() {
  if (router === null) throw new Error('example-router: called before init');
  return router;
}

/** `init(config) -> result<router-options, string>`: throw a string for err. */
export function init(config) {
  let cfg;
  try {
    cfg = parseConfig(config);
  } catch (e) {
    throw `example-router: ${errorText(e)}`;
  }
  router = new Router(cfg);
  return { headers: cfg.stickyHeader !== null ? [cfg.stickyHeader] : [], needsValue: false };
}

/** `update-targets(version: u64, targets)`; the policy ignores `version` (a BigInt). */
export function updateTargets(version, targets) {
  current().updateTargets(targets);
}

/** `route(batch) -> list<decision>`: one decision per record, in order. */
export function route(batch) {
  return current().route(batch);
}
