"""The statsmodels tier of the live forecaster: ETS, SARIMAX and STL for the few series that carry
most traffic, where they win.

A statsmodels fit costs 0.05–1 s per series (and the first import ≈ 3 s, 250 MB), so this tier
never runs on the event loop or inside the numpy refit. The engine hands out a `HeavyJob` (copies
of what the worker needs), `compute` runs it elsewhere — the live loop uses a worker process, so
neither the GIL nor statsmodels' memory is the proxy's — and returns a `HeavyResult`, which the
engine applies on its own thread again. Nothing is shared while the worker runs; both are
picklable.

A job re-chooses a series' blend by a rolling-origin backtest of all seven models on its longer
history (three days: the statsmodels models need two days in every window), and fits the
statsmodels models that earned weight on the last two days, producing paths long enough to serve
forecasts until the next job.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from predictor.backtest import BacktestConfig, run as backtest
from predictor.holtwinters import HoltWinters
from predictor.models import Model, Naive, SeasonalNaive, StatsETS, StatsSARIMAX, StatsSTL
from predictor.ridge import LagRidge

NUMPY_MODELS = ("naive", "seasonal_naive", "holt_winters", "lag_ridge")
HEAVY_MODELS = ("sm_ets", "sm_sarimax", "sm_stl")
ALL_MODELS = NUMPY_MODELS + HEAVY_MODELS
MIN_WEIGHT = 0.01  # a statsmodels model below this weight in every bucket is not fitted live


@dataclass(frozen=True, slots=True)
class HeavyJob:
    rows: np.ndarray  # engine series indices
    ids: tuple[str, ...]
    history: tuple[np.ndarray, ...]  # per row, its longer history (oldest first), up to three days
    choose: np.ndarray  # per row: re-run the backtest (else keep `weights`)
    weights: np.ndarray  # [r, len(ALL_MODELS), buckets] the current blend
    open_bin: int  # the bin forecasts start at: step 1 of every path
    steps: int  # path length
    period: int
    buckets: tuple[int, ...]
    quantiles: tuple[float, float]


    @property
    def fits_anything(self) -> bool:
        """False when no series can be backtested yet and none has statsmodels weight to refresh:
        the job then only starts long histories, and `compute` is instant (no fit, no import)."""
        need = history_needed(self.period)
        heavy = self.weights[:, len(NUMPY_MODELS):, :]
        return any(self.choose[k] and len(self.history[k]) >= need for k in range(len(self.rows))) or \
            bool((heavy >= MIN_WEIGHT).any())


@dataclass(frozen=True, slots=True)
class HeavyPath:
    open_bin: int
    rows: np.ndarray
    point: np.ndarray  # [r, steps]
    lower: np.ndarray
    upper: np.ndarray

    def slice(self, open_bin: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The `h` steps starting at `open_bin`, or None once the path no longer reaches that far."""
        off = open_bin - self.open_bin
        if off < 0 or off + h > self.point.shape[1]:
            return None
        return self.point[:, off : off + h], self.lower[:, off : off + h], self.upper[:, off : off + h]


@dataclass(frozen=True, slots=True)
class HeavyResult:
    rows: np.ndarray
    ids: tuple[str, ...]
    chosen: np.ndarray  # per row: whether `weights`/`factor` come from a fresh backtest
    weights: np.ndarray  # [r, len(ALL_MODELS), buckets]
    factor: np.ndarray  # [r, buckets] band widening (meaningful where chosen)
    paths: dict[str, HeavyPath]
    seconds: float


def history_needed(period: int, step: int = 12, origins: int = 3) -> int:
    """Bins a series needs before its statsmodels backtest has `origins` origins."""
    return 2 * period + max(12, step) + step * (origins - 1)


def compute(job: HeavyJob) -> HeavyResult:
    """Backtest where asked, then fit the statsmodels models that carry weight. Pure: reads only the job."""
    t0 = time.perf_counter()
    r = len(job.rows)
    weights = job.weights.copy()
    factor = np.ones((r, len(job.buckets)))
    chosen = np.zeros(r, dtype=bool)
    need = history_needed(job.period)
    pick = [k for k in range(r) if job.choose[k] and len(job.history[k]) >= need]
    if pick:
        length = min(len(job.history[k]) for k in pick)
        values = np.stack([job.history[k][-length:] for k in pick]).astype(np.float64)
        q = job.quantiles
        models: list[Model] = [Naive(q), SeasonalNaive(job.period, q), HoltWinters(job.period, quantiles=q),
                               LagRidge(job.period, quantiles=q),
                               StatsETS(job.period, q), StatsSARIMAX(job.period, q), StatsSTL(job.period, q)]
        cfg = BacktestConfig(horizons=job.buckets, window=2 * job.period, step=12, max_origins=8,
                             choice_fraction=0.99, statsmodels_top_n=len(pick), statsmodels_max_origins=8,
                             quantiles=q)
        res = backtest(values, tuple(job.ids[k] for k in pick), 86_400 / job.period, cfg, models=models,
                       start_slot=(job.open_bin - length) % job.period)
        for j, k in enumerate(pick):
            weights[k] = np.stack([res.weights[m][j] for m in ALL_MODELS])
            factor[k] = res.interval_factor
            chosen[k] = True
    paths: dict[str, HeavyPath] = {}
    classes = {"sm_ets": StatsETS, "sm_sarimax": StatsSARIMAX, "sm_stl": StatsSTL}
    window = 2 * job.period
    for m, name in enumerate(HEAVY_MODELS, start=len(NUMPY_MODELS)):
        use = [k for k in range(r) if weights[k, m].max() >= MIN_WEIGHT and len(job.history[k]) >= window]
        if not use:
            continue
        y = np.stack([job.history[k][-window:] for k in use]).astype(np.float64)
        model = classes[name](job.period, job.quantiles).fit(y, start_slot=(job.open_bin - window) % job.period)
        p, lo, hi = model.predict(job.steps)
        paths[name] = HeavyPath(job.open_bin, job.rows[use], p, lo, hi)
    return HeavyResult(job.rows, job.ids, chosen, weights, factor, paths, time.perf_counter() - t0)


# ---------------------------------------------------------------- running a job in its own process
def _worker_main(conn: Connection, job: HeavyJob) -> None:
    """Child process: compute, send the result (or the error) back, exit."""
    try:
        conn.send((compute(job), None))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        conn.send((None, RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        conn.close()


def start_process(job: HeavyJob) -> tuple[multiprocessing.process.BaseProcess, asyncio.Future[HeavyResult]]:
    """Run `compute(job)` in a fresh spawned process (statsmodels' memory goes with it when it
    exits) and return it with a future of the running loop for its result. A process that dies
    without answering fails the future; killing the process is always safe (nothing joins it
    without a timeout, unlike a multiprocessing Pool)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[HeavyResult] = loop.create_future()
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, args=(send, job), name="warmfront-statsmodels", daemon=True)
    proc.start()
    send.close()   # the child holds the only writer: its exit means EOF here

    def settle(result: HeavyResult | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        elif result is not None:
            fut.set_result(result)

    def wait() -> None:
        try:
            result, error = receive.recv()
        except (EOFError, OSError):
            result, error = None, RuntimeError(f"statsmodels worker exited with {proc.exitcode} before answering")
        finally:
            receive.close()
        proc.join(5)
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: nobody wants the result
            pass

    threading.Thread(target=wait, name="warmfront-statsmodels-wait", daemon=True).start()
    return proc, fut
