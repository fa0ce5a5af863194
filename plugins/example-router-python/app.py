"""Example router in Python: weighted power-of-two-choices, sticky per key
when configured. The policy is sdk/example-policy.md, to the bit: the Rust,
JS and C examples must make the same decisions on the same input.

Build:  sdk/python/build.sh plugins/example-router-python router OUT.wasm

Config (JSON object; empty string = {}):
    sticky         bool, default false
    sticky_header  string or null, default null
    seed           integer 1..=4294967295, default 1 (xorshift32 start state)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

from cdrs_plugin import ConfigError, load_config, view

U32 = 0xFFFF_FFFF
STICKY_MEMO_MAX = 16384  # sticky keys remembered per target table (~1-2 MB)
FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def xorshift32(x: int) -> int:
    """One xorshift32 step (Marsaglia 2003) on a u32 state; returns the new
    state. Python ints are unbounded, so left shifts are masked to 32 bits."""
    x ^= (x << 13) & U32
    x ^= x >> 17
    x ^= (x << 5) & U32
    return x


def fnv1a32(data: bytes, h: int = FNV_OFFSET) -> int:
    """FNV-1a 32 of `data`, continuing from state `h` (default: the offset
    basis), so a common prefix can be hashed once."""
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & U32
    return h


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser (Appleby 2011) on a u32. FNV-1a alone
    mixes its last bytes poorly, so rendezvous scores of similar ids would
    correlate; the policy runs every score through this."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & U32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & U32
    h ^= h >> 16
    return h


@dataclass(frozen=True)
class Config:
    sticky: bool = False
    sticky_header: Optional[str] = None
    seed: int = 1


def parse_config(text: str) -> Config:
    """Parse and validate the `init` config; raises ConfigError."""
    obj = load_config(text, ("sticky", "sticky_header", "seed"))
    sticky = obj.get("sticky", False)
    # `type(...) is` rather than isinstance: in Python bool is an int, and
    # the spec wants `sticky: 1` and `seed: true` rejected alike.
    if type(sticky) is not bool:
        raise ConfigError(f"sticky must be a boolean, got {sticky!r}")
    sticky_header = obj.get("sticky_header")
    if sticky_header is not None and type(sticky_header) is not str:
        raise ConfigError(f"sticky_header must be a string or null, got {sticky_header!r}")
    seed = obj.get("seed", 1)
    if type(seed) is not int or not 1 <= seed <= U32:
        raise ConfigError(f"seed must be an integer in 1..=4294967295, got {seed!r}")
    return Config(sticky, sticky_header, seed)


_DEFAULT = types.Decision_Default()


class Router:
    """The policy's state and per-record choice, independent of the
    component glue so it can be tested natively."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = config.seed
        self.targets: list[types.Target] = []
        self.assigned: list[int] = []
        # Derived from `targets` once per update_targets, not per record:
        self.eligible: list[int] = []
        self.weight: list[float] = []  # w(i) = f64(capacity) * f64(weight), by target index
        self.sticky_prefix: list[int] = []  # fnv1a32(id ++ 0x00) per entry of `eligible`
        # sticky key -> rendezvous winner. A pure function of the key and
        # `eligible`, so memoising it changes no decision; it spares hashing
        # every eligible id per record (the costly part in interpreted Python).
        self.sticky_memo: dict[bytes, int] = {}
        # One decision object per target, reused for every record routed
        # there: the host only reads them, and it saves an allocation per record.
        self.route_to: list[types.Decision_Route] = []

    def next(self) -> int:
        self.rng = xorshift32(self.rng)
        return self.rng

    def update_targets(self, targets: list[types.Target]) -> None:
        self.targets = list(targets)
        self.assigned = [0] * len(targets)
        self.weight = [float(t.capacity) * float(t.weight) for t in targets]
        self.route_to = [types.Decision_Route(i) for i in range(len(targets))]
        usable = [i for i, t in enumerate(targets) if t.capacity > 0 and t.weight > 0]
        healthy = [i for i in usable if targets[i].health == types.Health.HEALTHY]
        self.eligible = healthy or [i for i in usable if targets[i].health == types.Health.DEGRADED]
        self.sticky_prefix = [fnv1a32(targets[i].id.encode("utf-8") + b"\x00") for i in self.eligible]
        self.sticky_memo = {}

    def rendezvous(self, key: bytes) -> int:
        """The eligible target with the greatest fmix32(fnv1a32(id ++ 0x00 ++
        key)); equal scores: the lower index (strict > while walking the
        indexes in ascending order). `eligible` must not be empty."""
        best, best_score = self.eligible[0], -1
        for i, prefix in zip(self.eligible, self.sticky_prefix):
            score = fmix32(fnv1a32(key, prefix))
            if score > best_score:
                best, best_score = i, score
        return best

    def choose(self, sticky_key: Optional[bytes]) -> Optional[int]:
        """The target index for one record (None: no eligible target), and
        count it in `assigned`. `sticky_key` is None unless the router is
        sticky and the record has a sticky key."""
        eligible = self.eligible
        if not eligible:
            return None
        if sticky_key is not None:
            target = self.sticky_memo.get(sticky_key, -1)
            if target < 0:
                target = self.rendezvous(sticky_key)
                if len(self.sticky_memo) >= STICKY_MEMO_MAX:
                    self.sticky_memo.clear()  # bound the memory; it refills
                self.sticky_memo[sticky_key] = target
        elif len(eligible) == 1:
            target = eligible[0]
        else:
            n = len(eligible)
            p = self.next() % n
            q = self.next() % (n - 1)
            if q >= p:
                q += 1
            a, b = eligible[p], eligible[q]
            w = self.weight
            # Integer sum, then one IEEE double division (int / float in Python).
            load_a = (self.targets[a].inflight + self.assigned[a]) / w[a]
            load_b = (self.targets[b].inflight + self.assigned[b]) / w[b]
            if load_a != load_b:
                target = a if load_a < load_b else b
            elif w[a] != w[b]:
                target = a if w[a] > w[b] else b
            else:
                target = min(a, b)
        self.assigned[target] += 1
        return target

    def route(self, batch: types.Batch) -> list[types.Decision]:
        sticky = self.config.sticky
        header = self.config.sticky_header
        out: list[types.Decision] = []
        for r in view(batch):
            key: Optional[bytes] = None
            if sticky:
                key = r.header(header) if header is not None else r.key
            target = self.choose(key)
            out.append(_DEFAULT if target is None else self.route_to[target])
        return out


# Module state, not instance state: the instance of `WitWorld` the runtime
# calls is not ours to manage, a module global is unambiguous.
_router: Optional[Router] = None


def _current() -> Router:
    if _router is None:
        raise RuntimeError("example-router: called before init")
    return _router


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> types.RouterOptions:
        global _router
        try:
            cfg = parse_config(config)
        except ConfigError as e:
            raise Err(f"example-router: {e}") from None
        _router = Router(cfg)
        headers = [cfg.sticky_header] if cfg.sticky_header is not None else []
        return types.RouterOptions(headers=headers, needs_value=False)

    def update_targets(self, version: int, targets: list[types.Target]) -> None:
        _current().update_targets(targets)  # `version` is ignored by the policy

    def route(self, batch: types.Batch) -> list[types.Decision]:
        return _current().route(batch)
