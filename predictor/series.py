"""Dense count series: from trace files or rows to `[n_series, T]` arrays, coarser bins, a live ring buffer.

Gaps are zeros, not missing: a source that sent nothing in a bin sent zero requests, and every
model downstream relies on the arrays being dense and aligned to one clock.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Iterable

import numpy as np

DAY_S = 86_400.0


class TraceError(ValueError):
    """A trace file that cannot be read as counts; the message is one line meant for a user."""


@dataclass(frozen=True, slots=True)
class Series:
    ids: tuple[str, ...]
    values: np.ndarray  # [n_series, T] counts per bin, float64
    bin_s: float
    start_s: float  # start of bin 0, seconds (trace offset or epoch)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return int(self.values.shape[1])

    def period(self, span_s: float = DAY_S) -> int:
        """Bins per `span_s` (288 for a day of 5-minute bins)."""
        return int(round(span_s / self.bin_s))


def from_rows(rows: Iterable[tuple[float, str, float]], bin_s: float | None = None) -> Series:
    """Rows of (bin start in seconds, series id, count) to a dense Series; the bin is detected
    as the greatest common step between distinct bin starts when not given."""
    times: list[float] = []
    names: list[str] = []
    counts: list[float] = []
    for t, name, c in rows:
        times.append(float(t))
        names.append(name)
        counts.append(float(c))
    if not times:
        raise TraceError("trace has no rows")
    t_arr = np.asarray(times)
    if bin_s is None:
        bin_s = _detect_bin(t_arr)
    ids = tuple(sorted(set(names), key=_natural_key))
    index = {s: i for i, s in enumerate(ids)}
    start = math.floor(float(t_arr.min()) / bin_s) * bin_s  # bins on clock boundaries
    cols = np.floor((t_arr - start) / bin_s + 1e-9).astype(np.int64)
    values = np.zeros((len(ids), int(cols.max()) + 1))
    np.add.at(values, (np.fromiter((index[s] for s in names), np.int64, len(names)), cols), counts)
    return Series(ids, values, float(bin_s), start)


def from_requests(times_s: np.ndarray, ids: list[str], bin_s: float = 60.0) -> Series:
    """One row per request (timestamp in seconds, series id) to counts per bin."""
    return from_rows(((float(t), s, 1.0) for t, s in zip(times_s, ids)), bin_s=bin_s)


def load_trace(path: str | Path, request_bin_s: float = 60.0) -> Series:
    """A `minute,source,count` file (any bin size) or a per-request `timestamp,source[,type][,cost]`
    file, whose requests are counted per `request_bin_s`. Raises TraceError with one clear line."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file not found: {p}")
    try:
        with p.open(newline="") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            body = list(reader)
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"cannot read trace {p}: {e}") from None
    try:
        if {"minute", "source", "count"} <= set(header):
            m, s, c = (header.index(k) for k in ("minute", "source", "count"))
            return from_rows((float(r[m]) * 60.0, r[s], float(r[c])) for r in body if r)
        if {"timestamp", "source"} <= set(header):
            return _from_request_rows(header, body, request_bin_s)
    except (ValueError, IndexError) as e:
        raise TraceError(f"bad row in {p}: {e}") from None
    raise TraceError(
        f"{p}: expected columns minute,source,count or timestamp,source[,type][,cost]; got {','.join(header)}"
    )


def _from_request_rows(header: list[str], body: list[list[str]], bin_s: float) -> Series:
    ti, si = header.index("timestamp"), header.index("source")
    ty = header.index("type") if "type" in header else None
    rows = [r for r in body if r]
    raw = [r[ti].strip() for r in rows]
    try:
        secs = np.asarray(raw, dtype=float)
    except ValueError:
        # ISO date-times; numpy parses them without a per-row Python call
        stamps = np.asarray([x.replace(" ", "T") for x in raw], dtype="datetime64[ns]")
        secs = stamps.astype(np.int64) / 1e9
    ids = [r[si] if ty is None else f"{r[si]}/{r[ty]}" for r in rows]
    return from_requests(secs, ids, bin_s)


def _detect_bin(t: np.ndarray) -> float:
    u = np.unique(np.round(t, 6))
    if len(u) < 2:
        return 60.0
    steps = np.unique(np.diff(u)).round().astype(np.int64)
    return float(reduce(math.gcd, steps.tolist()))


def _natural_key(s: str) -> tuple:
    # f2 before f10, as a person would sort source names
    head = s.rstrip("0123456789")
    tail = s[len(head):]
    return (head, int(tail) if tail else -1, s)


def aggregate(series: Series, bin_s: float) -> Series:
    """Sum into coarser bins (a whole multiple of the current bin); a trailing partial bin is dropped
    because its low total would read as a drop in traffic."""
    k = int(round(bin_s / series.bin_s))
    if k < 1 or abs(k * series.bin_s - bin_s) > 1e-6:
        raise ValueError(f"cannot aggregate {series.bin_s:g}s bins into {bin_s:g}s")
    if k == 1:
        return series
    # align coarse bins to the clock (bin boundaries at multiples of bin_s), not to the first row
    skip = int(round(((-series.start_s) % bin_s) / series.bin_s)) % k
    v = series.values[:, skip:]
    t = (v.shape[1] // k) * k
    out = v[:, :t].reshape(series.n, t // k, k).sum(axis=2)
    return Series(series.ids, out, float(bin_s), series.start_s + skip * series.bin_s)


class RingBuffer:
    """The last `capacity` bins of every series, float32, for the live path.

    Two days of 5-minute bins is 576 × 4 B = 2.3 KiB per series, which with the Holt-Winters state
    stays under the 4 KiB per series budget.
    """

    def __init__(self, n_series: int, capacity: int) -> None:
        self._data = np.zeros((n_series, capacity), dtype=np.float32)
        self._head = 0  # next column to write
        self.filled = 0  # bins written, capped at capacity

    @property
    def capacity(self) -> int:
        return int(self._data.shape[1])

    @property
    def n(self) -> int:
        return int(self._data.shape[0])

    def append_bin(self, values: np.ndarray) -> None:
        self._data[:, self._head] = values
        self._head = (self._head + 1) % self.capacity
        self.filled = min(self.filled + 1, self.capacity)

    def grow(self, n_series: int) -> None:
        """Room for new series (appended at the end, zero history)."""
        if n_series > self.n:
            extra = np.zeros((n_series - self.n, self.capacity), dtype=np.float32)
            self._data = np.concatenate([self._data, extra])

    def select(self, rows: np.ndarray) -> None:
        """Keep only these series (in this order), with their history."""
        self._data = self._data[rows]

    def window(self, length: int | None = None) -> np.ndarray:
        """The last `length` bins (default: all filled), oldest first, `[n_series, length]`."""
        length = self.filled if length is None else min(length, self.filled)
        idx = (self._head - length + np.arange(length)) % self.capacity
        return self._data[:, idx]
