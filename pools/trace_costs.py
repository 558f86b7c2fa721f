"""Per-request CPU costs from a trace's token counts: the cost profile behind `simulate --resources`.

A per-request trace with `context_tokens` and `generated_tokens` (the Azure LLM inference trace)
says how much work each request is, not only that it came. An inference server spends CPU (or
accelerator) time on both phases: prefill reads every context token once, in large batches; decode
makes one pass over the model per generated token. So a request costs, in core-seconds,

    context_tokens × per_context_token + generated_tokens × per_generated_token.

The two prices are a model of such a server, chosen on the command line, not a measurement. The
costs are binned exactly as `predictor.series.load_trace` bins the requests, so row `i`, column `b`
of `TraceCosts.core_s` is the work of the requests counted in `Series.values[i, b]`.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor.series import Series, TraceError, from_rows

TOKEN_COLUMNS = ("context_tokens", "generated_tokens")


@dataclass(frozen=True, slots=True)
class CostModel:
    """Core-seconds per token of each phase of a request."""
    per_context_token: float     # prefill: core-seconds per context (prompt) token
    per_generated_token: float   # decode: core-seconds per generated token


@dataclass(frozen=True, slots=True)
class TraceCosts:
    """Summed core-seconds of the requests per (series, bin), aligned with the trace's `Series`."""
    ids: tuple[str, ...]       # the Series' ids: `source`, or `source/type` with a type column
    core_s: np.ndarray         # [series, bin] core-seconds of the requests arriving in each bin
    model: CostModel
    median_request_s: float    # the median request's cost, core-seconds (to show the model's scale)


def has_token_columns(path: str | Path) -> bool:
    """Whether the trace's header names both token columns (a count trace never does)."""
    try:
        with Path(path).open(newline="") as f:
            header = {h.strip().lower() for h in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError):
        return False
    return set(TOKEN_COLUMNS) <= header


def load_costs(path: str | Path, series: Series, model: CostModel) -> TraceCosts:
    """The core-seconds per (series, bin) of the per-request trace at `path`, which `series` was
    loaded from. Raises TraceError (one line) when the trace has no token counts."""
    p = Path(path)
    if not has_token_columns(p):
        raise TraceError(f"--resources needs per-request token counts (columns {','.join(TOKEN_COLUMNS)}); "
                         f"{p} has none")
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        rows = [r for r in reader if r]
    ti, si = header.index("timestamp"), header.index("source")
    ty = header.index("type") if "type" in header else None
    ci, gi = (header.index(c) for c in TOKEN_COLUMNS)
    try:
        secs = _seconds([r[ti].strip() for r in rows])
        cost = (np.asarray([float(r[ci]) for r in rows]) * model.per_context_token
                + np.asarray([float(r[gi]) for r in rows]) * model.per_generated_token)
    except (ValueError, IndexError) as e:
        raise TraceError(f"bad row in {p}: {e}") from None
    ids = [r[si] if ty is None else f"{r[si]}/{r[ty]}" for r in rows]
    binned = from_rows(zip(secs.tolist(), ids, cost.tolist()), bin_s=series.bin_s)
    if binned.ids != series.ids or binned.start_s != series.start_s or binned.values.shape != series.values.shape:
        raise TraceError(f"{p}: token costs do not line up with the request counts")
    return TraceCosts(series.ids, binned.values, model, float(np.median(cost)) if len(cost) else 0.0)


def _seconds(raw: list[str]) -> np.ndarray:
    """Timestamps as `load_trace` reads them: seconds, or ISO date-times (to epoch seconds)."""
    try:
        return np.asarray(raw, dtype=float)
    except ValueError:
        stamps = np.asarray([x.replace(" ", "T") for x in raw], dtype="datetime64[ns]")
        return stamps.astype(np.int64) / 1e9
