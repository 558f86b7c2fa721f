"""The per-(source, type) counter row: its layout, shared by the workers that count and the history
that keeps the counts (a plain list, so the hot path does index increments only)."""
from __future__ import annotations

OTHER = "other"   # the source name requests of untracked sources are counted under

# Upper bounds (seconds) of the per-minute latency histogram; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (0.002, 0.008, 0.032, 0.128, 0.512, 2.048, 8.192)

REQUESTS, ERRORS, ABORTS, BYTES_IN, BYTES_OUT, LATENCY_SUM, HIST = range(7)
WIDTH = HIST + len(LATENCY_BOUNDS) + 1
