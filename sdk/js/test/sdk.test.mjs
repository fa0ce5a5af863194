// The batch reader and helpers of sdk/js/cdrs-plugin.js, under plain Node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RECORD_BYTES, Tables, View, records, view, Decision, Verdict, stamp, errorText,
  loadConfig, ConfigError, utf8,
} from '../cdrs-plugin.js';

const b = (s) => utf8(s);

test('round trips records, headers and absences (as layout.rs)', () => {
  const t = new Tables();
  t.push(7, 1700, 'k1', 'v1', [['a', 'x'], ['n', null]]);
  t.push(8, null, null, null, []);
  t.push(9, -1, '', 'v3', [['b', '']]);
  const v = t.view();
  assert.equal(v.length, 3);
  const r = [...v];
  assert.equal(r[0].offset, 7);
  assert.equal(r[0].offsetBig, 7n);
  assert.equal(r[0].timestampMs, 1700);
  assert.deepEqual(r[0].key, b('k1'));
  assert.deepEqual(r[0].value, b('v1'));
  assert.deepEqual(r[0].headers, [['a', b('x')], ['n', null]]);
  assert.deepEqual(r[0].header('a'), b('x'));
  assert.equal(r[0].header('n'), null);
  assert.equal(r[0].hasHeader('n'), true);
  assert.equal(r[0].header('zz'), null);
  assert.equal(r[0].hasHeader('zz'), false);
  assert.deepEqual([r[1].timestampMs, r[1].key, r[1].value], [null, null, null]);
  assert.deepEqual(r[1].headers, []);
  assert.equal(r[2].timestampMs, -1);
  assert.deepEqual(r[2].key, new Uint8Array(0));
  assert.deepEqual(r[2].header('b'), new Uint8Array(0));
  assert.equal(v.get(3), null);
  assert.equal(records(t.batch()).length, 3);
});

test('first header with the key wins, even when its value is null', () => {
  const t = new Tables();
  t.push(0, null, null, null, [['h', null], ['h', 'second']]);
  t.push(1, null, null, null, [['h', 'first'], ['h', null]]);
  const [a, c] = records(t.batch());
  assert.equal(a.header('h'), null);
  assert.deepEqual(c.header('h'), b('first'));
  assert.equal(a.header('H'), null, 'case-sensitive');
});

test('large and negative offsets and timestamps', () => {
  const t = new Tables();
  t.push(2n ** 40n + 5n, -(2n ** 40n), null, null, []);
  t.push(2n ** 63n - 1n, 0, null, null, []);
  const [r, s] = records(t.batch());
  assert.equal(r.offset, 2 ** 40 + 5);
  assert.equal(r.timestampMs, -(2 ** 40));
  assert.equal(s.offsetBig, 2n ** 63n - 1n);
  assert.equal(s.timestampMs, 0);
});

test('garbage tables read as empty, not throw', () => {
  const rec = new Uint8Array(RECORD_BYTES * 2 + 3).fill(0xff);
  const v = new View(rec, Uint8Array.of(1, 2, 3), b('abc'));
  assert.equal(v.length, 2);
  for (const r of v) {
    assert.equal(r.key, null);
    assert.deepEqual(r.headers, []);
  }
  const one = new Uint8Array(RECORD_BYTES);
  one[20] = 200; // key length 200 at start 0: out of range
  assert.deepEqual(new View(one, new Uint8Array(0), b('abc')).get(0).key, new Uint8Array(0));
});

test('views over a sub-range of a buffer (byteOffset != 0)', () => {
  const t = new Tables();
  t.push(3, 4, 'k', 'v', [['h', 'x']]);
  const bt = t.batch();
  const shift = (u) => {
    const big = new Uint8Array(u.length + 5);
    big.set(u, 5);
    return big.subarray(5);
  };
  const [r] = records({ records: shift(bt.records), headers: shift(bt.headers), data: shift(bt.data) });
  assert.equal(r.offset, 3);
  assert.deepEqual(r.key, b('k'));
  assert.deepEqual(r.header('h'), b('x'));
});

test('decision and verdict shapes are what componentize-js expects', () => {
  assert.deepEqual(Decision.route(2), { tag: 'route', val: 2 });
  assert.deepEqual(Decision.routeMany([0, 1]), { tag: 'route-many', val: [0, 1] });
  assert.deepEqual(Decision.default(), { tag: 'default' });
  assert.deepEqual(Decision.drop(), { tag: 'drop' });
  assert.deepEqual(Decision.deadLetter('x'), { tag: 'dead-letter', val: 'x' });
  assert.deepEqual(Verdict.keep(), { tag: 'keep' });
  assert.deepEqual(Verdict.transform({ key: b('k'), headers: [['h', 'v'], { key: 'n', value: null }] }), {
    tag: 'transform',
    val: { key: b('k'), value: null, headers: [{ key: 'h', value: b('v') }, { key: 'n', value: null }] },
  });
  const t = new Tables();
  t.push(0, null, 'k', null, [['a', null]]);
  assert.deepEqual(stamp(view(t.batch()).get(0), 's', 'v'), {
    tag: 'transform',
    val: { key: b('k'), value: null, headers: [{ key: 'a', value: null }, { key: 's', value: b('v') }] },
  });
  assert.equal(errorText(new Error('boom')), 'boom');
  assert.equal(errorText('s'), 's');
  assert.equal(errorText(42), '42');
});

test('loadConfig: strict JSON, integers as BigInt, unknown and duplicate keys refused', () => {
  assert.deepEqual({ ...loadConfig('', ['a']) }, {});
  assert.deepEqual({ ...loadConfig('  \n', ['a']) }, {});
  const c = loadConfig('{"a": 1, "b": 1.0, "c": -0, "d": 1e2, "e": "x\\u00e9\\n", "f": [true, null, {}]}', 'abcdef');
  assert.equal(c.a, 1n);
  assert.equal(c.b, 1);
  assert.equal(c.c, 0n);
  assert.equal(c.d, 100);
  assert.equal(c.e, 'x\u00e9\n');
  assert.deepEqual(c.f, [true, null, Object.create(null)]);
  assert.equal(loadConfig('{"a": 18446744073709551616}', ['a']).a, 2n ** 64n);
  for (const bad of ['[]', 'null', '1', '"x"', '{', '{"a":1,}', '{"a":1}x', '{a:1}', "{'a':1}",
    '{"a":01}', '{"a":+1}', '{"a":.5}', '{"a":1.}', '{"a":NaN}', '{"a":1,"a":2}', '{"z":1}',
    '{"a":"\t"}', '{"a":"\\x"}', '{"a":tru}']) {
    assert.throws(() => loadConfig(bad, ['a']), ConfigError, bad);
  }
});
