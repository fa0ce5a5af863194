"""Example filter in Python: key, size and header rules, with an optional
stamp. The policy is sdk/example-policy.md, to the bit: the Rust, JS and C
examples must give the same verdicts on the same input.

Build:  sdk/python/build.sh plugins/example-filter-python filter OUT.wasm

Config (JSON object; empty string = {}):
    require_key      bool, default false
    max_value_bytes  integer >= 0 or null, default null
    deny_header      string or null, default null
    stamp_header     string or null, default null

Per record, the first rule that applies:
    1. require_key and no key                 -> dead-letter "missing key"
    2. value longer than max_value_bytes      -> dead-letter "value is L bytes, over max_value_bytes M"
    3. a header keyed deny_header (any value) -> drop
    4. stamp_header set                       -> transform: same key, value, headers + (stamp_header, "example-filter")
    5.                                        -> keep
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

from cdrs_plugin import ConfigError, Record, load_config, view

STAMP_VALUE = b"example-filter"


@dataclass(frozen=True)
class Config:
    require_key: bool = False
    max_value_bytes: Optional[int] = None
    deny_header: Optional[str] = None
    stamp_header: Optional[str] = None


def _optional_str(obj: dict[str, Any], key: str) -> Optional[str]:
    v = obj.get(key)
    if v is not None and type(v) is not str:
        raise ConfigError(f"{key} must be a string or null, got {v!r}")
    return v


def parse_config(text: str) -> Config:
    """Parse and validate the `init` config; raises ConfigError."""
    obj = load_config(text, ("require_key", "max_value_bytes", "deny_header", "stamp_header"))
    require_key = obj.get("require_key", False)
    # `type(...) is`: bool is a subclass of int in Python; 1 is not a bool
    # and true is not an integer here.
    if type(require_key) is not bool:
        raise ConfigError(f"require_key must be a boolean, got {require_key!r}")
    max_value_bytes = obj.get("max_value_bytes")
    # Upper bound u64 max: what the other languages' examples can hold, so a
    # config they reject is rejected here too.
    if max_value_bytes is not None and (type(max_value_bytes) is not int or not 0 <= max_value_bytes < 2**64):
        raise ConfigError(f"max_value_bytes must be an integer in 0..2^64 or null, got {max_value_bytes!r}")
    return Config(
        require_key=require_key,
        max_value_bytes=max_value_bytes,
        deny_header=_optional_str(obj, "deny_header"),
        stamp_header=_optional_str(obj, "stamp_header"),
    )


# Payload-free verdicts are shared by every record: the host only reads them.
_KEEP = types.Verdict_Keep()
_DROP = types.Verdict_Drop()
_MISSING_KEY = types.Verdict_DeadLetter("missing key")


class Filter:
    """The policy, independent of the component glue so it can be tested
    natively."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def verdict(self, r: Record) -> types.Verdict:
        c = self.config
        if c.require_key and r.key is None:
            return _MISSING_KEY
        if c.max_value_bytes is not None:
            value = r.value
            if value is not None and len(value) > c.max_value_bytes:
                return types.Verdict_DeadLetter(
                    f"value is {len(value)} bytes, over max_value_bytes {c.max_value_bytes}"
                )
        if c.deny_header is not None and r.has_header(c.deny_header):
            return _DROP
        if c.stamp_header is not None:
            headers = [types.Header(k, v) for k, v in r.headers]
            headers.append(types.Header(c.stamp_header, STAMP_VALUE))
            return types.Verdict_Transform(types.Rewrite(key=r.key, value=r.value, headers=headers))
        return _KEEP

    def filter(self, batch: types.Batch) -> list[types.Verdict]:
        verdict = self.verdict
        return [verdict(r) for r in view(batch)]


# Module state, not instance state: the instance of `WitWorld` the runtime
# calls is not ours to manage, a module global is unambiguous.
_filter: Optional[Filter] = None


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global _filter
        try:
            _filter = Filter(parse_config(config))
        except ConfigError as e:
            raise Err(f"example-filter: {e}") from None

    def filter(self, batch: types.Batch) -> list[types.Verdict]:
        if _filter is None:
            raise RuntimeError("example-filter: called before init")
        return _filter.filter(batch)
