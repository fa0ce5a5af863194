"""Native tests (plain CPython, no Wasm) of the Python SDK reader and of the
example router and filter policies (sdk/example-policy.md).

    python3 -m unittest discover -s sdk/python/tests

The plugins import the generated bindings (`wit_world`,
`componentize_py_types`). These tests generate them from sdk/wit with
componentize-py (`sdk/python/build.sh --install` puts it in .tools/venv) into
a temp dir; without componentize-py the plugin tests are skipped and the
reader tests still run. Needs Python >= 3.11 (the bindings use typing.Self).
"""

from __future__ import annotations

import atexit
import importlib.util
import random
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

sys.dont_write_bytecode = True  # no __pycache__ beside the plugins' sources
SDK = Path(__file__).resolve().parent.parent
REPO = SDK.parent.parent
sys.path.insert(0, str(SDK))

import cdrs_plugin  # noqa: E402
from cdrs_plugin import ConfigError, Tables, View, load_config  # noqa: E402

U32 = 0xFFFF_FFFF


# ---------------------------------------------------------------------------
# Loading the plugins against generated bindings


def _componentize_py() -> Optional[str]:
    local = REPO / ".tools" / "venv" / "bin" / "componentize-py"
    if local.exists():
        return str(local)
    return shutil.which("componentize-py")


_BINDINGS_ROOT: Optional[Path] = None
_APPS: dict[str, ModuleType] = {}
_BINDING_MODULES = ("wit_world", "componentize_py_types", "componentize_py_async_support", "poll_loop")


def load_app(world: str, plugin: str) -> ModuleType:
    """Import plugins/<plugin>/app.py against freshly generated bindings for
    `world`. Each app keeps references to its own copy of the bindings, so
    router and filter can be loaded side by side."""
    global _BINDINGS_ROOT
    if plugin in _APPS:
        return _APPS[plugin]
    cpy = _componentize_py()
    if cpy is None:
        raise unittest.SkipTest("componentize-py not found: run sdk/python/build.sh --install")
    if _BINDINGS_ROOT is None:
        _BINDINGS_ROOT = Path(tempfile.mkdtemp(prefix="cdrs-py-bindings-"))
        atexit.register(shutil.rmtree, _BINDINGS_ROOT, True)
    out = _BINDINGS_ROOT / world
    if not out.exists():
        subprocess.run(
            [cpy, "-d", str(REPO / "sdk" / "wit"), "-w", world, "bindings", str(out)],
            check=True,
            capture_output=True,
        )
    for name in list(sys.modules):
        if name.split(".")[0] in _BINDING_MODULES:
            del sys.modules[name]
    cdrs_plugin._TYPES = None  # its cached bindings belong to the previous world
    sys.path.insert(0, str(out))
    try:
        spec = importlib.util.spec_from_file_location(f"app_{world}", REPO / "plugins" / plugin / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(out))
    _APPS[plugin] = module
    return module


def router_app() -> ModuleType:
    return load_app("router", "example-router-python")


def filter_app() -> ModuleType:
    return load_app("filter", "example-filter-python")


def make_batch(app: ModuleType, rows: list[dict[str, Any]]) -> Any:
    """A `types.Batch` of the app's bindings from rows like the fixtures'
    records.jsonl (key/value as str or bytes)."""
    t = Tables()
    for i, row in enumerate(rows):
        enc = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
        t.push(
            row.get("offset", i),
            row.get("timestamp_ms"),
            enc(row.get("key")),
            enc(row.get("value")),
            [(k, enc(v)) for k, v in row.get("headers", [])],
        )
    return app.types.Batch("topic", 0, t.count, bytes(t.records), bytes(t.headers), bytes(t.data))


def target(app: ModuleType, id: str, **kw: Any) -> Any:
    """A `types.Target` with the fixtures' defaults."""
    health = {"healthy": app.types.Health.HEALTHY, "degraded": app.types.Health.DEGRADED, "down": app.types.Health.DOWN}
    return app.types.Target(
        id=id,
        zone=kw.get("zone"),
        labels=[],
        weight=kw.get("weight", 100),
        capacity=kw.get("capacity", 100),
        inflight=kw.get("inflight", 0),
        queue_depth=0,
        cpu_permille=0,
        latency_ewma_us=0,
        error_rate_permille=0,
        health=health[kw.get("health", "healthy")],
        report_age_ms=0,
    )


def route_indexes(app: ModuleType, decisions: list[Any]) -> list[Optional[int]]:
    """Decisions as target indexes; None for `default`."""
    out: list[Optional[int]] = []
    for d in decisions:
        if isinstance(d, app.types.Decision_Default):
            out.append(None)
        else:
            assert isinstance(d, app.types.Decision_Route), d
            out.append(d.value)
    return out


# ---------------------------------------------------------------------------
# The reader


class ReaderTest(unittest.TestCase):
    def test_round_trips_records_headers_and_absences(self) -> None:
        t = Tables()
        t.push(7, 1_700, b"k1", b"v1", [("a", b"x"), ("n", None)])
        t.push(8, None, None, None, [])
        t.push(9, -1, b"", b"v3", [("b", b"")])
        v = t.view()
        self.assertEqual(len(v), 3)
        r = list(v)
        self.assertEqual((r[0].offset, r[0].timestamp_ms), (7, 1_700))
        self.assertEqual((r[0].key, r[0].value), (b"k1", b"v1"))
        self.assertEqual(r[0].headers, [("a", b"x"), ("n", None)])
        self.assertEqual(r[0].header("a"), b"x")
        self.assertIsNone(r[0].header("n"))
        self.assertTrue(r[0].has_header("n"))
        self.assertFalse(r[0].has_header("A"))
        self.assertEqual((r[1].timestamp_ms, r[1].key, r[1].value, r[1].headers), (None, None, None, []))
        self.assertEqual((r[2].timestamp_ms, r[2].key), (-1, b""))
        self.assertEqual(r[2].header("b"), b"")
        self.assertIsNone(v.get(3))
        self.assertEqual(v.get(2).offset, 9)  # type: ignore[union-attr]

    def test_first_header_wins_even_when_null(self) -> None:
        t = Tables()
        t.push(0, None, None, None, [("h", None), ("h", b"later"), ("x", b"1")])
        r = t.view().get(0)
        assert r is not None
        self.assertIsNone(r.header("h"))
        self.assertEqual(r.header("x"), b"1")

    def test_records_of_a_batch_object(self) -> None:
        class B:  # anything with records / headers / data
            pass

        t = Tables()
        t.push(5, None, b"k", None, [("\u00e9t\u00e9", b"summer")])
        b = B()
        b.records, b.headers, b.data = bytes(t.records), bytes(t.headers), bytes(t.data)  # type: ignore[attr-defined]
        rs = cdrs_plugin.records(b)
        self.assertEqual([r.offset for r in rs], [5])
        self.assertEqual(rs[0].header("\u00e9t\u00e9"), b"summer")

    def test_garbage_tables_read_as_empty_not_raise(self) -> None:
        v = View(b"\xff" * (40 * 2 + 3), b"\x01\x02\x03", b"abc")
        self.assertEqual(len(v), 2)
        for r in v:
            self.assertIsNone(r.key)
            self.assertEqual(r.headers, [])
            self.assertIsNone(r.header("x"))
        entry = bytearray(40)
        entry[20] = 200  # key length 200 at start 0: out of range
        self.assertEqual(View(bytes(entry), b"", b"abc").get(0).key, b"")  # type: ignore[union-attr]


class ConfigTest(unittest.TestCase):
    def test_empty_is_empty_object(self) -> None:
        self.assertEqual(load_config("", ["a"]), {})
        self.assertEqual(load_config("  \n", ["a"]), {})
        self.assertEqual(load_config("{}", ["a"]), {})

    def test_rejects(self) -> None:
        for text in ['{"b": 1}', "[]", "null", "1", "{", '{"a": 1, "a": 2}', "{} x"]:
            with self.subTest(text=text), self.assertRaises(ConfigError):
                load_config(text, ["a"])


# ---------------------------------------------------------------------------
# Router


def reference_route(config: dict[str, Any], targets: list[dict[str, Any]], batches: list[list[dict[str, Any]]]) -> list[list[Optional[int]]]:
    """The router policy transcribed from sdk/example-policy.md as literally as
    possible (no caching, no precomputed hashes): the plugin's optimisations
    must not change a decision."""

    def xs(x: int) -> int:
        x = (x ^ (x << 13)) % 2**32
        x = (x ^ (x >> 17)) % 2**32
        return (x ^ (x << 5)) % 2**32

    def fnv(bs: bytes) -> int:
        h = 0x811C9DC5
        for b in bs:
            h = ((h ^ b) * 0x01000193) % 2**32
        return h

    def fmix(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2**32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2**32
        return h ^ (h >> 16)

    rng = config.get("seed", 1)
    assigned = [0] * len(targets)
    out = []
    for batch in batches:
        res: list[Optional[int]] = []
        for rec in batch:
            ok = lambda t, h: t.get("health", "healthy") == h and t.get("capacity", 100) > 0 and t.get("weight", 100) > 0  # noqa: E731
            eligible = [i for i, t in enumerate(targets) if ok(t, "healthy")] or [
                i for i, t in enumerate(targets) if ok(t, "degraded")
            ]
            if not eligible:
                res.append(None)
                continue
            key = None
            if config.get("sticky"):
                if config.get("sticky_header") is not None:
                    key = next((v for k, v in rec.get("headers", []) if k == config["sticky_header"]), None)
                else:
                    key = rec.get("key")
            w = lambda i: float(targets[i].get("capacity", 100)) * float(targets[i].get("weight", 100))  # noqa: E731
            if key is not None:
                scores = [(fmix(fnv(targets[i]["id"].encode() + b"\x00" + key)), -i) for i in eligible]
                chosen = -max(scores)[1]
            elif len(eligible) == 1:
                chosen = eligible[0]
            else:
                n = len(eligible)
                rng = xs(rng)
                p = rng % n
                rng = xs(rng)
                q = rng % (n - 1)
                if q >= p:
                    q += 1
                a, b = eligible[p], eligible[q]
                load = lambda i: float(targets[i].get("inflight", 0) + assigned[i]) / w(i)  # noqa: E731
                chosen = min((a, b), key=lambda i: (load(i), -w(i), i))
            assigned[chosen] += 1
            res.append(chosen)
        out.append(res)
    return out


class RouterTest(unittest.TestCase):
    app: ModuleType

    @classmethod
    def setUpClass(cls) -> None:
        cls.app = router_app()

    def router(self, config: str = "", targets: Optional[list[Any]] = None) -> Any:
        r = self.app.Router(self.app.parse_config(config))
        if targets is not None:
            r.update_targets(targets)
        return r

    def route(self, router: Any, rows: list[dict[str, Any]]) -> list[Optional[int]]:
        return route_indexes(self.app, router.route(make_batch(self.app, rows)))

    def test_xorshift32_from_1(self) -> None:
        x, seq = 1, []
        for _ in range(3):
            x = self.app.xorshift32(x)
            seq.append(x)
        self.assertEqual(seq, [270369, 67634689, 2647435461])
        r = self.router('{"seed": 1}')
        self.assertEqual([r.next(), r.next(), r.next()], seq)
        x = U32
        for _ in range(1000):  # stays a u32, never reaches 0
            x = self.app.xorshift32(x)
            self.assertTrue(0 < x <= U32)

    def test_fnv1a32(self) -> None:
        f = self.app.fnv1a32
        self.assertEqual(f(b""), 0x811C9DC5)
        self.assertEqual(f(b"a"), 0xE40C292C)
        self.assertEqual(f(b"foobar"), 0xBF9CF968)
        self.assertEqual(f(b"bar", f(b"foo")), f(b"foobar"))  # continuing a prefix

    def test_fmix32(self) -> None:
        self.assertEqual(self.app.fmix32(0xE40C292C), 0x1A80B1B3)  # the spec's test vector
        self.assertEqual(self.app.fmix32(0), 0)
        self.assertTrue(0 <= self.app.fmix32(U32) <= U32)

    def test_config_accepts(self) -> None:
        C = self.app.Config
        p = self.app.parse_config
        self.assertEqual(p(""), C(False, None, 1))
        self.assertEqual(p("{}"), C(False, None, 1))
        self.assertEqual(p('{"sticky": true, "sticky_header": "client", "seed": 4294967295}'), C(True, "client", U32))
        self.assertEqual(p('{"sticky_header": null}'), C(False, None, 1))

    def test_config_rejects(self) -> None:
        bad = [
            '{"seed": true}',
            '{"seed": 0}',
            '{"seed": -1}',
            '{"seed": 4294967296}',
            '{"seed": 1.0}',
            '{"seed": "1"}',
            '{"seed": null}',
            '{"sticky": 1}',
            '{"sticky": "true"}',
            '{"sticky": null}',
            '{"sticky_header": 5}',
            '{"sticky_header": ["a"]}',
            '{"stickyy": true}',
            "[]",
            "not json",
        ]
        for text in bad:
            with self.subTest(config=text):
                with self.assertRaises(ConfigError):
                    self.app.parse_config(text)
                with self.assertRaises(self.app.Err) as e:
                    self.app.WitWorld().init(text)
                self.assertIsInstance(e.exception.value, str)

    def test_init_options(self) -> None:
        opts = self.app.WitWorld().init('{"sticky": true, "sticky_header": "client"}')
        self.assertEqual((opts.headers, opts.needs_value), (["client"], False))
        opts = self.app.WitWorld().init("")
        self.assertEqual((opts.headers, opts.needs_value), ([], False))

    def test_through_world_exports(self) -> None:
        w = self.app.WitWorld()
        w.init('{"seed": 7}')
        w.update_targets(1, [target(self.app, "a"), target(self.app, "b", health="down")])
        decisions = w.route(make_batch(self.app, [{"key": "k"}] * 3))
        self.assertEqual(route_indexes(self.app, decisions), [0, 0, 0])

    def test_default_without_eligible_targets_and_rng_untouched(self) -> None:
        r = self.router("")
        self.assertEqual(self.route(r, [{}, {}]), [None, None])  # before any update_targets
        a = self.app
        r.update_targets([target(a, "a", health="down"), target(a, "b", capacity=0), target(a, "c", weight=0)])
        self.assertEqual(self.route(r, [{}, {"key": "k"}]), [None, None])
        self.assertEqual(r.rng, 1)
        self.assertEqual(r.assigned, [0, 0, 0])

    def test_single_eligible_draws_nothing(self) -> None:
        a = self.app
        r = self.router("", [target(a, "a", health="down"), target(a, "b"), target(a, "c", health="degraded")])
        self.assertEqual(self.route(r, [{}] * 4), [1] * 4)
        self.assertEqual(r.rng, 1)
        self.assertEqual(r.assigned, [0, 4, 0])

    def test_degraded_only_when_no_healthy(self) -> None:
        a = self.app
        r = self.router("", [target(a, "a", health="degraded"), target(a, "b", health="down"), target(a, "c", health="degraded")])
        got = self.route(r, [{}] * 50)
        self.assertEqual(set(got), {0, 2})
        r.update_targets([target(a, "a", health="degraded"), target(a, "b"), target(a, "c", health="degraded", capacity=0)])
        self.assertEqual(set(self.route(r, [{}] * 50)), {1})

    def test_down_never_chosen(self) -> None:
        a = self.app
        targets = [target(a, f"t{i}", health="down" if i % 3 == 0 else "healthy") for i in range(9)]
        for cfg in ("", '{"sticky": true}'):
            r = self.router(cfg, targets)
            got = self.route(r, [{"key": f"k{i}"} for i in range(500)])
            self.assertFalse({0, 3, 6} & set(got), cfg)

    def test_first_decisions_seed_1(self) -> None:
        # Two equal targets: draws 270369 % 2 = 1, 67634689 % 1 = 0 -> a = 1,
        # b = 0; equal loads, equal w -> lower index 0. Then 0 has one
        # assigned, so 1 is less loaded whatever the draw, and so on.
        a = self.app
        r = self.router("", [target(a, "x"), target(a, "y")])
        self.assertEqual(self.route(r, [{}] * 4), [0, 1, 0, 1])
        self.assertEqual(r.rng, self.app.xorshift32(self.app.xorshift32(self.app.xorshift32(self.app.xorshift32(
            self.app.xorshift32(self.app.xorshift32(self.app.xorshift32(self.app.xorshift32(1)))))))))

    def test_tie_breaks(self) -> None:
        a = self.app
        # Lower load wins: inflight/w = 50/10000 vs 10/10000.
        r = self.router("", [target(a, "x", inflight=50), target(a, "y", inflight=10)])
        self.assertEqual(self.route(r, [{}]), [1])
        # Equal loads (0), greater w wins: w = 100*100 vs 200*100.
        r = self.router("", [target(a, "x"), target(a, "y", capacity=200)])
        self.assertEqual(self.route(r, [{}]), [1])
        # Equal loads, equal w (capacity/weight swapped): lower index.
        r = self.router("", [target(a, "x", capacity=50, weight=200), target(a, "y", capacity=200, weight=50)])
        self.assertEqual(self.route(r, [{}]), [0])
        # Equal loads from different numbers: 1/10000 == 2/20000 -> greater w.
        r = self.router("", [target(a, "x", inflight=1), target(a, "y", inflight=2, capacity=200)])
        self.assertEqual(self.route(r, [{}]), [1])

    def test_load_is_one_double_division(self) -> None:
        # 1/3 vs 2/6 are the same double; a float-free comparison would agree,
        # but (1 * (1/3)) style products would not always: check the tie goes
        # to the greater w (6 > 3).
        a = self.app
        r = self.router("", [target(a, "x", inflight=1, capacity=3, weight=1), target(a, "y", inflight=2, capacity=6, weight=1)])
        self.assertEqual(self.route(r, [{}]), [1])

    def test_update_targets_resets_counts_keeps_rng(self) -> None:
        a = self.app
        ts = [target(a, "x"), target(a, "y"), target(a, "z")]
        r = self.router('{"seed": 99}', ts)
        self.route(r, [{}] * 10)
        self.assertEqual(sum(r.assigned), 10)
        rng = r.rng
        r.update_targets(ts)
        self.assertEqual((r.assigned, r.rng), ([0, 0, 0], rng))

    def test_sticky_per_key(self) -> None:
        a = self.app
        ts = [target(a, f"srv-{i}") for i in range(5)]
        r = self.router('{"sticky": true}', ts)
        keys = [f"client-{i % 7}" for i in range(40)]
        first = self.route(r, [{"key": k} for k in keys])
        by_key: dict[str, int] = {}
        for k, t in zip(keys, first):
            self.assertEqual(by_key.setdefault(k, t), t)
        self.assertEqual(r.rng, 1)  # sticky records draw nothing
        # Same keys, another batch, with load on the chosen targets: unchanged.
        ts2 = [target(a, f"srv-{i}", inflight=90) for i in range(5)]
        r.update_targets(ts2)
        self.assertEqual(self.route(r, [{"key": k} for k in keys]), first)
        # The winner is the greatest fmix32(fnv1a32(id ++ 0x00 ++ key)).
        f, m = self.app.fnv1a32, self.app.fmix32
        for k, t in by_key.items():
            scores = [m(f(f"srv-{i}".encode() + b"\x00" + k.encode())) for i in range(5)]
            self.assertEqual(t, scores.index(max(scores)), k)
        # Sticky routes count in `assigned`.
        self.assertEqual(sum(r.assigned), 40)

    def test_sticky_moves_only_when_target_goes_down(self) -> None:
        a = self.app
        ts = [target(a, f"srv-{i}") for i in range(4)]
        r = self.router('{"sticky": true}', ts)
        keys = [{"key": f"k{i}"} for i in range(100)]
        before = self.route(r, keys)
        ts[2] = target(a, "srv-2", health="down")
        r.update_targets(ts)
        after = self.route(r, keys)
        for b, c in zip(before, after):
            if b != 2:
                self.assertEqual(b, c)
            else:
                self.assertNotEqual(c, 2)

    def test_sticky_memo_is_invisible(self) -> None:
        a = self.app
        ts = [target(a, f"srv-{i}") for i in range(4)]
        rows = [{"key": f"k{i % 10}"} for i in range(60)]
        want = self.route(self.router('{"sticky": true}', ts), rows)
        saved = a.STICKY_MEMO_MAX
        a.STICKY_MEMO_MAX = 3  # overflow and clear over and over
        try:
            r = self.router('{"sticky": true}', ts)
            self.assertEqual(self.route(r, rows), want)
            self.assertLessEqual(len(r.sticky_memo), 3)
        finally:
            a.STICKY_MEMO_MAX = saved
        self.assertEqual(want, [self.app.Router.rendezvous(r, row["key"].encode()) for row in rows])

    def test_sticky_equal_scores_lower_index(self) -> None:
        a = self.app
        r = self.router('{"sticky": true}', [target(a, "same"), target(a, "same")])
        self.assertEqual(self.route(r, [{"key": "k"}, {"key": ""}]), [0, 0])

    def test_sticky_key_sources(self) -> None:
        a = self.app
        ts = [target(a, "x"), target(a, "y"), target(a, "z")]
        # Empty record key is a key: no draw.
        r = self.router('{"sticky": true}', ts)
        self.route(r, [{"key": ""}])
        self.assertEqual(r.rng, 1)
        # Absent key: p2c (draws).
        self.route(r, [{}])
        self.assertNotEqual(r.rng, 1)
        # sticky_header: the header's value is the key, the record key is not used.
        r = self.router('{"sticky": true, "sticky_header": "client"}', ts)
        self.route(r, [{"key": "k", "headers": [["client", "c1"]]}])
        self.assertEqual(r.rng, 1)
        for rows in ([{"key": "k"}], [{"key": "k", "headers": [["client", None], ["client", "c2"]]}], [{"headers": [["Client", "c"]]}]):
            r = self.router('{"sticky": true, "sticky_header": "client"}', ts)
            self.route(r, rows)
            self.assertNotEqual(r.rng, 1, rows)  # no sticky key: drew
        # Same header value -> same target whatever the record key.
        r = self.router('{"sticky": true, "sticky_header": "client"}', ts)
        got = self.route(r, [{"key": f"k{i}", "headers": [["client", "c7"]]} for i in range(10)])
        self.assertEqual(len(set(got)), 1)
        # Not sticky: keys are ignored, every record draws.
        r = self.router('{"sticky_header": "client"}', ts)
        self.route(r, [{"key": "k", "headers": [["client", "c1"]]}])
        self.assertNotEqual(r.rng, 1)

    def test_matches_literal_transcription_of_the_spec(self) -> None:
        a = self.app
        rnd = random.Random(20261126)
        health = ["healthy", "healthy", "degraded", "down"]
        for case in range(60):
            n = rnd.randint(0, 6)
            tdefs = [
                {
                    "id": f"t{rnd.randint(0, 3)}-{i}",
                    "health": rnd.choice(health),
                    "capacity": rnd.choice([0, 1, 3, 100, 200, 4294967295]),
                    "weight": rnd.choice([0, 1, 50, 100, 4294967295]),
                    "inflight": rnd.choice([0, 0, 1, 7, 100, 4294967295]),
                }
                for i in range(n)
            ]
            cfg: dict[str, Any] = {"seed": rnd.randint(1, U32)}
            if rnd.random() < 0.5:
                cfg["sticky"] = True
                if rnd.random() < 0.5:
                    cfg["sticky_header"] = "s"
            batches = []
            for _ in range(3):
                rows = []
                for _ in range(rnd.randint(0, 30)):
                    row: dict[str, Any] = {}
                    if rnd.random() < 0.7:
                        row["key"] = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 5)))
                    if rnd.random() < 0.5:
                        row["headers"] = [["s", rnd.choice([None, b"", b"a", b"b", b"zz"])]]
                    rows.append(row)
                batches.append(rows)
            import json

            r = self.router(json.dumps(cfg), [target(a, t.pop("id"), **t) for t in [dict(t) for t in tdefs]])
            got = [self.route(r, rows) for rows in batches]
            want = reference_route(cfg, tdefs, batches)
            self.assertEqual(got, want, f"case {case}: {cfg} {tdefs}")


# ---------------------------------------------------------------------------
# Filter


class FilterTest(unittest.TestCase):
    app: ModuleType

    @classmethod
    def setUpClass(cls) -> None:
        cls.app = filter_app()

    def run_filter(self, config: str, rows: list[dict[str, Any]]) -> list[Any]:
        return self.app.Filter(self.app.parse_config(config)).filter(make_batch(self.app, rows))

    def test_config(self) -> None:
        C = self.app.Config
        p = self.app.parse_config
        self.assertEqual(p(""), C())
        self.assertEqual(
            p('{"require_key": true, "max_value_bytes": 0, "deny_header": "x", "stamp_header": "y"}'),
            C(True, 0, "x", "y"),
        )
        self.assertEqual(p('{"max_value_bytes": null, "deny_header": null, "stamp_header": null}'), C())
        self.assertEqual(p('{"max_value_bytes": 18446744073709551615}').max_value_bytes, 2**64 - 1)
        bad = [
            '{"require_key": 1}',
            '{"require_key": null}',
            '{"max_value_bytes": true}',
            '{"max_value_bytes": -1}',
            '{"max_value_bytes": 18446744073709551616}',
            '{"max_value_bytes": 1.5}',
            '{"max_value_bytes": 10.0}',
            '{"max_value_bytes": "10"}',
            '{"deny_header": 3}',
            '{"stamp_header": false}',
            '{"other": 1}',
            "1",
        ]
        for text in bad:
            with self.subTest(config=text):
                with self.assertRaises(self.app.Err) as e:
                    self.app.WitWorld().init(text)
                self.assertIsInstance(e.exception.value, str)
        self.assertIsNone(self.app.WitWorld().init(""))

    def test_rules(self) -> None:
        t = self.app.types
        cfg = '{"require_key": true, "max_value_bytes": 100, "deny_header": "deny"}'
        rows = [
            {"value": "x"},  # 1: no key
            {"key": "", "value": "x" * 120},  # 2: empty key is a key; too long
            {"key": "k", "value": "x" * 100},  # exactly the max: fine
            {"key": "k", "headers": [["a", "1"], ["deny", None]]},  # 3: null value still counts
            {"key": "k", "value": "x" * 101, "headers": [["deny", "1"]]},  # 2 before 3
            {"key": "k", "headers": [["Deny", "1"]]},  # exact, case-sensitive
        ]
        got = self.run_filter(cfg, rows)
        self.assertEqual(
            got,
            [
                t.Verdict_DeadLetter("missing key"),
                t.Verdict_DeadLetter("value is 120 bytes, over max_value_bytes 100"),
                t.Verdict_Keep(),
                t.Verdict_Drop(),
                t.Verdict_DeadLetter("value is 101 bytes, over max_value_bytes 100"),
                t.Verdict_Keep(),
            ],
        )

    def test_no_rules_keeps_everything(self) -> None:
        got = self.run_filter("", [{}, {"key": "k", "value": "v" * 10_000, "headers": [["deny", "1"]]}])
        self.assertEqual(got, [self.app.types.Verdict_Keep()] * 2)

    def test_max_zero_and_absent_value(self) -> None:
        t = self.app.types
        got = self.run_filter('{"max_value_bytes": 0}', [{"value": ""}, {}, {"value": "a"}])
        self.assertEqual(got, [t.Verdict_Keep(), t.Verdict_Keep(), t.Verdict_DeadLetter("value is 1 bytes, over max_value_bytes 0")])

    def test_stamp(self) -> None:
        t = self.app.types
        got = self.run_filter(
            '{"stamp_header": "seen-by", "deny_header": "deny"}',
            [
                {"key": "k", "value": "v", "headers": [["a", "1"], ["n", None], ["a", "2"]]},
                {},
                {"key": "k", "headers": [["deny", "1"]]},
            ],
        )
        self.assertEqual(
            got,
            [
                t.Verdict_Transform(
                    t.Rewrite(
                        key=b"k",
                        value=b"v",
                        headers=[t.Header("a", b"1"), t.Header("n", None), t.Header("a", b"2"), t.Header("seen-by", b"example-filter")],
                    )
                ),
                t.Verdict_Transform(t.Rewrite(key=None, value=None, headers=[t.Header("seen-by", b"example-filter")])),
                t.Verdict_Drop(),
            ],
        )

    def test_through_world_exports(self) -> None:
        w = self.app.WitWorld()
        w.init('{"require_key": true}')
        got = w.filter(make_batch(self.app, [{"key": "k"}, {}]))
        self.assertEqual(got, [self.app.types.Verdict_Keep(), self.app.types.Verdict_DeadLetter("missing key")])


if __name__ == "__main__":
    unittest.main()
