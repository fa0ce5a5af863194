"""Helpers for CDRS plugins written in Python (componentize-py guests).

A plugin receives each batch flat (see `batch` in sdk/wit/plugin.wit): a table
of 40-byte record entries, a table of 16-byte header entries and one `data`
buffer holding every key, value and header. This module reads that layout in
place and hands out `Record` objects:

    from cdrs_plugin import records

    for r in records(batch):
        r.offset        # int, Kafka offset
        r.timestamp_ms  # int | None, ms since the Unix epoch
        r.key           # bytes | None
        r.value         # bytes | None (routers: only with needs_value)
        r.headers       # list[tuple[str, bytes | None]], in record order
        r.header("h")   # bytes | None: first header named "h", None if absent/null

It mirrors the Rust SDK reader (sdk/rust/src/layout.rs): `View`, `Record`,
and `Tables` (a writer, for tests). It also has constructors for decisions and
verdicts, a `log` that goes to the host, and a strict JSON config loader.

Nothing here needs the generated bindings (`wit_world`) at import time, so
the reader and the config loader run under plain CPython; the constructors
and `log` import the bindings on first use.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any, Iterable, Iterator, Optional, Sequence

__all__ = [
    "RECORD_BYTES",
    "HEADER_BYTES",
    "ABSENT",
    "NO_TIMESTAMP",
    "Record",
    "View",
    "Tables",
    "records",
    "view",
    "Decisions",
    "Verdicts",
    "header",
    "log",
    "ConfigError",
    "load_config",
]

RECORD_BYTES = 40
"""Bytes per entry of the record table."""
HEADER_BYTES = 16
"""Bytes per entry of the header table."""
ABSENT = 0xFFFF_FFFF
"""Length that marks an absent key or value, or a null header value."""
NO_TIMESTAMP = -(2**63)
"""Timestamp that marks a record without one (i64 min)."""

# offset s64, timestamp s64, key start/len, value start/len, first header, header count
_RECORD = struct.Struct("<qqIIIIII")
# key start/len, value start/len
_HEADER = struct.Struct("<IIII")


def _bytes(data: bytes, start: int, length: int) -> Optional[bytes]:
    """`data[start:start+length]`; None for ABSENT; b"" if out of range.

    Out of range never comes from the host; reading it as empty (not a
    truncated slice) matches the Rust reader.
    """
    if length == ABSENT:
        return None
    end = start + length
    if end > len(data):
        return b""
    return data[start:end]


def _utf8(raw: bytes) -> str:
    # Header keys are UTF-8; an invalid one reads as "" (as in the Rust SDK).
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""


class Record:
    """One record of a batch.

    The entry's integers are unpacked once (one `struct` call); key, value and
    headers are sliced out of `data` only when asked for, and each access
    slices again (bind `r.key` to a local if you use it more than once).
    """

    __slots__ = ("_hdrs", "_data", "offset", "_ts", "_ks", "_kl", "_vs", "_vl", "_hf", "_hn")

    def __init__(self, entry: tuple[int, int, int, int, int, int, int, int], headers: bytes, data: bytes) -> None:
        self._hdrs = headers
        self._data = data
        # `offset` (int): Kafka offset of the record in its partition.
        (self.offset, self._ts, self._ks, self._kl, self._vs, self._vl, self._hf, self._hn) = entry

    @property
    def timestamp_ms(self) -> Optional[int]:
        """Record timestamp, ms since the Unix epoch; None if it has none."""
        return None if self._ts == NO_TIMESTAMP else self._ts

    @property
    def key(self) -> Optional[bytes]:
        """The record key; None if it has none (an empty key is b"")."""
        return _bytes(self._data, self._ks, self._kl)

    @property
    def value(self) -> Optional[bytes]:
        """The payload; None if it has none. Routers get it only when
        `init` returned `needs_value=True`."""
        return _bytes(self._data, self._vs, self._vl)

    def _header_entries(self) -> Iterator[tuple[int, int, int, int]]:
        first = self._hf * HEADER_BYTES
        end = first + self._hn * HEADER_BYTES
        hdrs = self._hdrs
        if end > len(hdrs):
            return  # garbage table: no headers (as in the Rust SDK)
        for at in range(first, end, HEADER_BYTES):
            yield _HEADER.unpack_from(hdrs, at)

    @property
    def headers(self) -> list[tuple[str, Optional[bytes]]]:
        """The headers in record order as `(key, value)`; a null header has
        value None. Routers see only the headers they asked for."""
        data = self._data
        return [
            (_utf8(_bytes(data, ks, kl) or b""), _bytes(data, vs, vl))
            for ks, kl, vs, vl in self._header_entries()
        ]

    def has_header(self, name: str) -> bool:
        """Whether some header has exactly the key `name` (null value included)."""
        return self._find_header(name) is not None

    def header(self, name: str) -> Optional[bytes]:
        """The value of the first header whose key is exactly `name`; None if
        there is none or that first one is null."""
        entry = self._find_header(name)
        if entry is None:
            return None
        return _bytes(self._data, entry[2], entry[3])

    def _find_header(self, name: str) -> Optional[tuple[int, int, int, int]]:
        # Compare raw bytes instead of decoding every key. For a non-empty
        # name that is the same as comparing decoded keys; "" also matches a
        # key that is not valid UTF-8 (it decodes to "", as in the Rust SDK).
        want = name.encode("utf-8")
        data = self._data
        for entry in self._header_entries():
            raw = _bytes(data, entry[0], entry[1]) or b""
            if raw == want or (not want and _utf8(raw) == ""):
                return entry
        return None

    def __repr__(self) -> str:
        value = self.value
        return (
            f"Record(offset={self.offset}, timestamp_ms={self.timestamp_ms}, key={self.key!r}, "
            f"value_bytes={None if value is None else len(value)}, headers={self._hn})"
        )


class View:
    """A batch read in place: `len(view)`, `view.get(i)`, `iter(view)`.

    `records`, `headers`, `data` are the three byte buffers of a `batch`.
    The record count is `len(records) // 40` (a trailing partial entry is
    ignored), like the Rust reader.
    """

    __slots__ = ("_records", "_headers", "_data", "_len")

    def __init__(self, records: bytes, headers: bytes, data: bytes) -> None:
        self._records = records
        self._headers = headers
        self._data = data
        self._len = len(records) // RECORD_BYTES

    def __len__(self) -> int:
        return self._len

    def get(self, i: int) -> Optional[Record]:
        """The record at `i` (0-based), or None."""
        if not 0 <= i < self._len:
            return None
        return Record(_RECORD.unpack_from(self._records, i * RECORD_BYTES), self._headers, self._data)

    def __iter__(self) -> Iterator[Record]:
        table = self._records
        if len(table) != self._len * RECORD_BYTES:
            table = memoryview(table)[: self._len * RECORD_BYTES]
        headers, data = self._headers, self._data
        # iter_unpack walks the table in C: one tuple per record.
        return (Record(entry, headers, data) for entry in _RECORD.iter_unpack(table))


def view(batch: Any) -> View:
    """A `View` over a `batch` (the generated `types.Batch`, or anything with
    `records`, `headers` and `data` byte attributes)."""
    return View(batch.records, batch.headers, batch.data)


def records(batch: Any) -> list[Record]:
    """The records of `batch` in order, as a list of `Record`."""
    return list(view(batch))


class Tables:
    """A batch being written (for tests and tools): `push` records, then
    read them back with `view()` or make a `types.Batch` with `batch()`."""

    def __init__(self) -> None:
        self.count = 0
        self.records = bytearray()
        self.headers = bytearray()
        self.data = bytearray()

    def _append(self, raw: Optional[bytes]) -> tuple[int, int]:
        start = len(self.data)
        if raw is None:
            return start, ABSENT
        self.data += raw
        return start, len(raw)

    def push(
        self,
        offset: int,
        timestamp_ms: Optional[int] = None,
        key: Optional[bytes] = None,
        value: Optional[bytes] = None,
        headers: Iterable[tuple[str, Optional[bytes]]] = (),
    ) -> None:
        """Append one record. `headers` is `(key, value-or-None)` pairs."""
        first = len(self.headers) // HEADER_BYTES
        for hk, hv in headers:
            self.headers += _HEADER.pack(*self._append(hk.encode("utf-8")), *self._append(hv))
        n_headers = len(self.headers) // HEADER_BYTES - first
        ks, kl = self._append(key)
        vs, vl = self._append(value)
        ts = NO_TIMESTAMP if timestamp_ms is None else timestamp_ms
        self.records += _RECORD.pack(offset, ts, ks, kl, vs, vl, first, n_headers)
        self.count += 1

    def view(self) -> View:
        return View(bytes(self.records), bytes(self.headers), bytes(self.data))

    def batch(self, topic: str = "topic", partition: int = 0) -> Any:
        """A generated `types.Batch` holding what was written."""
        return _types().Batch(
            topic, partition, self.count, bytes(self.records), bytes(self.headers), bytes(self.data)
        )


# ---------------------------------------------------------------------------
# Decisions, verdicts, log: thin wrappers over the generated bindings.

_TYPES: Any = None


def _types() -> Any:
    """`wit_world.imports.types`, imported on first use (the bindings exist
    inside the component, or wherever `componentize-py bindings` wrote them)."""
    global _TYPES
    if _TYPES is None:
        from wit_world.imports import types

        _TYPES = types
    return _TYPES


class Decisions:
    """Router decisions (`decision` variant). Targets are indexes into the
    last list given to `update_targets`."""

    @staticmethod
    def route(target: int) -> Any:
        return _types().Decision_Route(target)

    @staticmethod
    def route_many(targets: Sequence[int]) -> Any:
        return _types().Decision_RouteMany(list(targets))

    @staticmethod
    def drop() -> Any:
        return _types().Decision_Drop()

    @staticmethod
    def dead_letter(reason: str) -> Any:
        return _types().Decision_DeadLetter(reason)

    @staticmethod
    def default() -> Any:
        """Let the host's built-in policy choose."""
        return _types().Decision_Default()


class Verdicts:
    """Filter verdicts (`verdict` variant)."""

    @staticmethod
    def keep() -> Any:
        return _types().Verdict_Keep()

    @staticmethod
    def drop() -> Any:
        return _types().Verdict_Drop()

    @staticmethod
    def dead_letter(reason: str) -> Any:
        return _types().Verdict_DeadLetter(reason)

    @staticmethod
    def transform(
        key: Optional[bytes],
        value: Optional[bytes],
        headers: Iterable[tuple[str, Optional[bytes]]],
    ) -> Any:
        """Replace key, value and headers wholesale (None: no key / value)."""
        t = _types()
        return t.Verdict_Transform(t.Rewrite(key, value, [t.Header(k, v) for k, v in headers]))


def header(key: str, value: Optional[bytes]) -> Any:
    """A `types.Header` for a rewrite."""
    return _types().Header(key, value)


_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level: str, msg: str) -> None:
    """Write `msg` to the host's log at `level` ("trace" .. "error").

    Outside a component (plain CPython, unit tests) the generated `host.log`
    is a stub; the line goes to stderr instead.
    """
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {_LEVELS}, got {level!r}")
    try:
        from wit_world.imports import host

        host.log(host.Level[level.upper()], msg)
    except (ImportError, NotImplementedError):
        print(f"[{level}] {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Config


class ConfigError(ValueError):
    """The plugin's config is not acceptable; `init` should fail with it."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_config(text: str, allowed: Iterable[str]) -> dict[str, Any]:
    """Parse the `config` string of `init`: a JSON object whose keys are all
    in `allowed`. An empty (or all-whitespace) string is `{}`.

    Raises ConfigError for invalid JSON, a non-object, a duplicate key or an
    unknown key. Values are not checked: that is the plugin's job (mind that
    `bool` is a subclass of `int` in Python: `isinstance(True, int)` is true).
    """
    if not text.strip():
        return {}
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"config must be a JSON object, got {type(obj).__name__}")
    allowed = set(allowed)
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; allowed: {sorted(allowed)}")
    return obj
