// The example router and filter (plugins/example-*-js/plugin.js), natively
// under plain Node: the policy of sdk/example-policy.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadPlugin } from './load-plugin.mjs';
import { Tables, utf8 } from '../cdrs-plugin.js';

const R = await loadPlugin('example-router-js');
const F = await loadPlugin('example-filter-js');

function target(id, capacity = 100, inflight = 0, health = 'healthy', weight = 100) {
  return {
    id, zone: undefined, labels: [], weight, capacity, inflight, queueDepth: 0, cpuPermille: 0,
    latencyEwmaUs: 0, errorRatePermille: 0, health, reportAgeMs: 0,
  };
}

function batchOfKeys(keys, headers = () => []) {
  const t = new Tables();
  keys.forEach((k, i) => t.push(i, null, k, null, headers(i)));
  return t.batch();
}

/** A fresh component-level router: init + updateTargets through the exports. */
function router(config, targets) {
  const options = R.init(config);
  R.updateTargets(1n, targets);
  return options;
}

const routes = (decisions) => decisions.map((d) => (d.tag === 'route' ? d.val : d.tag));

test('xorshift32 from seed 1, fnv1a32 and fmix32 match the spec', () => {
  let s = 1;
  const out = [];
  for (let i = 0; i < 3; i++) out.push((s = R.xorshift32(s)));
  assert.deepEqual(out, [270369, 67634689, 2647435461]);
  assert.equal(R.fnv1a32(utf8('a')), 0xe40c292c);
  assert.equal(R.fnv1a32(utf8('')), 0x811c9dc5);
  assert.equal(R.fnv1a32(utf8('b'), R.fnv1a32(utf8('a'))), R.fnv1a32(utf8('ab')));
  assert.equal(R.fnv1a32(utf8('foobar')), 0xbf9cf968); // published FNV-1a test vector
  assert.equal(R.fmix32(0xe40c292c), 0x1a80b1b3);
  assert.equal(R.fmix32(0), 0);
  assert.equal(R.fmix32(0xffffffff), 0x81f16f39); // MurmurHash3 fmix32, u32 arithmetic
  // Values stay u32 across many steps (no negative or fractional state).
  for (let i = 0; i < 10000; i++) s = R.xorshift32(s);
  assert.ok(Number.isInteger(s) && s > 0 && s <= 0xffffffff);
});

test('router config: defaults, options, and rejections', () => {
  assert.deepEqual(R.init(''), { headers: [], needsValue: false });
  assert.deepEqual(R.init('{}'), { headers: [], needsValue: false });
  assert.deepEqual(R.init('{"sticky": true, "sticky_header": "x-client"}'), { headers: ['x-client'], needsValue: false });
  assert.deepEqual(R.init('{"seed": 4294967295, "sticky_header": null}'), { headers: [], needsValue: false });
  for (const bad of ['{"seed": 0}', '{"seed": 4294967296}', '{"seed": -1}', '{"seed": true}', '{"seed": 1.5}',
    '{"seed": 1.0}', '{"seed": "1"}', '{"seed": null}', '{"sticky": 1}', '{"sticky": null}',
    '{"sticky_header": 5}', '{"colour": "red"}', '[]', 'nonsense', '{"seed": 1, "seed": 2}']) {
    assert.throws(() => R.init(bad), (e) => typeof e === 'string' && e.startsWith('example-router:'), bad);
  }
});

test('two choices from seed 1: the first draws, by hand', () => {
  // 3 equal targets: next() = 270369 -> p = 270369 % 3 = 0; next() = 67634689 -> q = % 2 = 1 -> q >= p -> 2.
  // Equal loads, equal w: lower index -> 0.
  router('{}', [target('a'), target('b'), target('c')]);
  const d = routes(R.route(batchOfKeys([null])));
  assert.deepEqual(d, [0]);
  // Then assigned[0] = 1; next() = 2647435461: p = 2647435461 % 3 = 0 ... the
  // load of 0 is now higher, so whatever is drawn with 0, the other wins.
  const p = 2647435461 % 3;
  let q = R.xorshift32(2647435461) % 2;
  if (q >= p) q += 1;
  const expect = p === 0 ? q : q === 0 ? p : Math.min(p, q);
  assert.deepEqual(routes(R.route(batchOfKeys([null]))), [expect]);
});

test('tie-breaks: equal load -> greater w; equal w -> lower index', () => {
  // Loads 0 on both; w differs: a has capacity 100, b 300 -> always b.
  router('{}', [target('a', 100), target('b', 300)]);
  assert.deepEqual(routes(R.route(batchOfKeys([null]))), [1]);
  // Equal loads by value: a = 1/(100*100), b = 3/(300*100) -> equal? 1e-4 vs 1e-4 (exact in f64? 3/30000 == 1/10000).
  router('{}', [target('a', 100, 1), target('b', 300, 3)]);
  assert.equal(1 / 10000, 3 / 30000);
  assert.deepEqual(routes(R.route(batchOfKeys([null]))), [1], 'equal load: greater w');
  // Equal load and w: the lower index, whichever order p, q were drawn in.
  for (let seed = 1; seed < 40; seed++) {
    router(`{"seed": ${seed}}`, [target('a'), target('b')]);
    assert.deepEqual(routes(R.route(batchOfKeys([null]))), [0], `seed ${seed}`);
  }
});

test('down targets are never chosen; degraded only when no healthy one; none -> default', () => {
  router('{}', [target('a', 100, 0, 'down'), target('b', 100, 0, 'degraded'), target('c'), target('d', 0)]);
  assert.ok(routes(R.route(batchOfKeys(new Array(50).fill(null)))).every((d) => d === 2));
  R.updateTargets(2n, [target('a', 100, 0, 'down'), target('b', 100, 0, 'degraded'), target('c', 100, 0, 'healthy', 0)]);
  assert.deepEqual(routes(R.route(batchOfKeys([null, null]))), [1, 1]);
  R.updateTargets(3n, [target('a', 100, 0, 'down'), target('b', 0, 0, 'degraded')]);
  assert.deepEqual(routes(R.route(batchOfKeys([null, 'k']))), ['default', 'default']);
  R.updateTargets(4n, []);
  assert.deepEqual(routes(R.route(batchOfKeys([null]))), ['default']);
  // Sticky too: a down target never wins the rendezvous.
  router('{"sticky": true}', [target('a', 100, 0, 'down'), target('b'), target('c')]);
  const keys = Array.from({ length: 200 }, (_, i) => `client-${i}`);
  assert.ok(routes(R.route(batchOfKeys(keys))).every((d) => d === 1 || d === 2));
});

test('split follows capacity and in-flight', () => {
  router('{}', [target('a', 100), target('b', 300)]);
  const d = routes(R.route(batchOfKeys(new Array(400).fill(null))));
  const toB = d.filter((x) => x === 1).length;
  assert.ok(toB >= 290 && toB <= 310, `b got ${toB} of 400`);
  router('{}', [target('a', 100, 100), target('b', 100, 0)]);
  assert.ok(routes(R.route(batchOfKeys(new Array(100).fill(null)))).every((x) => x === 1));
});

test('assigned counts reset on updateTargets; rng state kept across batches and updates', () => {
  const targets = [target('a'), target('b'), target('c'), target('d')];
  router('{"seed": 7}', targets);
  const one = routes(R.route(batchOfKeys(new Array(30).fill(null))));
  R.updateTargets(2n, targets);
  const two = routes(R.route(batchOfKeys(new Array(30).fill(null))));
  // Same from a model that routes the 60 records in one go with a reset in between.
  const m = new R.Router(R.parseConfig('{"seed": 7}'));
  m.updateTargets(targets);
  const a = Array.from({ length: 30 }, () => m.choose(null));
  m.updateTargets(targets);
  const b = Array.from({ length: 30 }, () => m.choose(null));
  assert.deepEqual([one, two], [a, b]);
  assert.notDeepEqual(one, two, 'rng is not reset by updateTargets');
});

test('sticky: stable per key, rendezvous max score, only a lost target\'s keys move', () => {
  const targets = () => [target('a'), target('b'), target('c')];
  const keys = Array.from({ length: 60 }, (_, i) => `client-${i}`);
  router('{"sticky": true}', targets());
  const first = routes(R.route(batchOfKeys(keys)));
  assert.deepEqual(first, routes(R.route(batchOfKeys(keys))), 'same keys, same targets');
  // The chosen target has the greatest fnv1a32(id ++ 0 ++ key).
  keys.forEach((k, i) => {
    const scores = ['a', 'b', 'c'].map((id) => R.fmix32(R.fnv1a32(utf8(`${id}\0${k}`))));
    assert.equal(first[i], scores.indexOf(Math.max(...scores)));
  });
  assert.ok(new Set(first).size === 3, 'keys spread over all targets');
  const down = targets();
  down[1].health = 'down';
  R.updateTargets(2n, down);
  const after = routes(R.route(batchOfKeys(keys)));
  first.forEach((before, i) => {
    assert.notEqual(after[i], 1);
    if (before !== 1) assert.equal(after[i], before, 'a key of a live target moved');
  });
  // An empty key is a key; an absent key falls back to two choices (which uses the rng).
  router('{"sticky": true}', targets());
  const e = routes(R.route(batchOfKeys(['', ''])));
  assert.equal(e[0], e[1]);
  const m = new R.Router(R.parseConfig('{"sticky": true}'));
  m.updateTargets(targets());
  assert.equal(m.choose(null), 0); // seed 1: p = 0, q = 2 -> equal -> 0
  assert.equal(m.rng, 67634689, 'two next() calls');
});

test('sticky rendezvous ties go to the lower index', () => {
  // Two targets with the same id have the same score for every key.
  router('{"sticky": true}', [target('x'), target('same'), target('same')]);
  const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
  const d = routes(R.route(batchOfKeys(keys)));
  assert.ok(d.every((x) => x !== 2));
  assert.ok(d.includes(1));
});

test('sticky_header: first header value; absent or null header -> two choices', () => {
  router('{"sticky": true, "sticky_header": "x-client"}', [target('a'), target('b'), target('c')]);
  const hdr = (i) => (i % 3 === 0 ? [['x-client', `c${i % 6}`]] : i % 3 === 1 ? [['x-client', null], ['x-client', 'late']] : []);
  const keys = new Array(30).fill('same-record-key');
  const d1 = routes(R.route(batchOfKeys(keys, hdr)));
  const score = (k) => ['a', 'b', 'c'].map((id) => R.fmix32(R.fnv1a32(utf8(`${id}\0${k}`))));
  for (let i = 0; i < 30; i += 3) {
    const s = score(`c${i % 6}`);
    assert.equal(d1[i], s.indexOf(Math.max(...s)));
  }
  // A model that sees no sticky key for the other records gives the same decisions.
  const m = new R.Router(R.parseConfig('{"sticky": true, "sticky_header": "x-client"}'));
  m.updateTargets([target('a'), target('b'), target('c')]);
  const model = keys.map((_, i) => m.choose(i % 3 === 0 ? utf8(`c${i % 6}`) : null));
  assert.deepEqual(d1, model);
  // Sticky off: keys and headers are ignored.
  router('{"sticky_header": "x-client"}', [target('a'), target('b'), target('c')]);
  const m2 = new R.Router(R.parseConfig('{}'));
  m2.updateTargets([target('a'), target('b'), target('c')]);
  assert.deepEqual(routes(R.route(batchOfKeys(keys, hdr))), keys.map(() => m2.choose(null)));
});

test('one decision per record, for empty and large batches', () => {
  router('{}', [target('a'), target('b')]);
  assert.deepEqual(R.route(new Tables().batch()), []);
  assert.equal(R.route(batchOfKeys(new Array(1000).fill(null))).length, 1000);
});

// ---------------------------------------------------------------- filter

function filterBatch(rows) {
  const t = new Tables();
  rows.forEach(([key, value, headers = []], i) => t.push(i, null, key, value, headers));
  return t.batch();
}

const show = (v) => (v.tag === 'transform'
  ? { tag: v.tag, key: v.val.key, value: v.val.value, headers: v.val.headers }
  : v);

test('filter: the first rule that applies decides; exact reason texts', () => {
  F.init('{"require_key": true, "max_value_bytes": 3, "deny_header": "x-deny", "stamp_header": "x-by"}');
  const out = F.filter(filterBatch([
    [null, 'abcdef'],
    ['k', 'abcdef'],
    ['k', 'ab', [['x-deny', null]]],
    ['k', null, [['h', 'v']]],
    ['k', 'abc', [['X-Deny', 'v']]],
  ])).map(show);
  assert.deepEqual(out, [
    { tag: 'dead-letter', val: 'missing key' },
    { tag: 'dead-letter', val: 'value is 6 bytes, over max_value_bytes 3' },
    { tag: 'drop' },
    { tag: 'transform', key: utf8('k'), value: null, headers: [{ key: 'h', value: utf8('v') }, { key: 'x-by', value: utf8('example-filter') }] },
    { tag: 'transform', key: utf8('k'), value: utf8('abc'), headers: [{ key: 'X-Deny', value: utf8('v') }, { key: 'x-by', value: utf8('example-filter') }] },
  ]);
});

test('filter: empty config keeps everything; each rule alone', () => {
  F.init('');
  assert.deepEqual(F.filter(filterBatch([[null, null], ['k', 'v', [['h', null]]]])), [{ tag: 'keep' }, { tag: 'keep' }]);
  F.init('{"max_value_bytes": 100}');
  assert.deepEqual(F.filter(filterBatch([[null, 'x'.repeat(120)], [null, 'x'.repeat(100)], [null, null]])),
    [{ tag: 'dead-letter', val: 'value is 120 bytes, over max_value_bytes 100' }, { tag: 'keep' }, { tag: 'keep' }]);
  F.init('{"max_value_bytes": 0}');
  assert.deepEqual(F.filter(filterBatch([[null, ''], [null, 'a']])),
    [{ tag: 'keep' }, { tag: 'dead-letter', val: 'value is 1 bytes, over max_value_bytes 0' }]);
  F.init('{"max_value_bytes": 18446744073709551615}');
  assert.deepEqual(F.filter(filterBatch([[null, 'abc']])), [{ tag: 'keep' }]);
  F.init('{"require_key": true}');
  assert.deepEqual(F.filter(filterBatch([[null, null], ['', null]])), [{ tag: 'dead-letter', val: 'missing key' }, { tag: 'keep' }]);
  F.init('{"deny_header": "x"}');
  assert.deepEqual(F.filter(filterBatch([[null, null, [['a', null], ['x', 'v']]], [null, null, [['xx', null]]]])),
    [{ tag: 'drop' }, { tag: 'keep' }]);
  F.init('{"require_key": false, "max_value_bytes": null, "deny_header": null, "stamp_header": "s"}');
  assert.deepEqual(F.filter(filterBatch([[null, null]])).map(show),
    [{ tag: 'transform', key: null, value: null, headers: [{ key: 's', value: utf8('example-filter') }] }]);
});

test('filter config rejections', () => {
  for (const bad of ['{"require_key": 1}', '{"require_key": null}', '{"max_value_bytes": -1}', '{"max_value_bytes": 1.5}',
    '{"max_value_bytes": 3.0}', '{"max_value_bytes": "3"}', '{"max_value_bytes": 18446744073709551616}',
    '{"deny_header": 1}', '{"stamp_header": true}', '{"x": 1}', '[]', '{']) {
    assert.throws(() => F.init(bad), (e) => typeof e === 'string' && e.startsWith('example-filter:'), bad);
  }
});
