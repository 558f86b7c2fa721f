"""The access log: one JSON line per answered request, written off the request path.

The request path appends one tuple per request to `AccessLog.entries` (`Proxy.finish`, behind one
`is not None` test): no formatting, no I/O, no lock. Every `FLUSH_INTERVAL` the worker's
`AccessLog.run` task takes what accumulated, formats it on the loop in slices of `SLICE` lines
(yielding between slices, so a big batch never holds the loop for long) and hands the batch to a
writer thread as one bytes object, written with one `write()` (the thread keeps a slow disk's
stall off the loop).

Where lines go. Each worker appends to the file itself, opened with O_APPEND: on Linux a
`write()` to a regular file with O_APPEND moves the offset and writes under the inode's lock, so
batches of several workers land one after another and never inside each other (local
filesystems; not NFS). Sending batches to the control process over the channel would give one
writer, but funnel every worker's formatting into the process that runs the control loop: the
formatting is the cost (≈ 1 µs a line), so it stays with the worker that served the request.
`-` is the worker's standard output, inherited from `warmfront run`; when that is a pipe a batch
is written in pieces of whole lines of at most PIPE_BUF bytes, the size a pipe keeps whole.

Rotation: before each write the thread compares the path's inode with the open file's and
reopens on a difference (logrotate's default rename + create); `copytruncate` needs nothing, the
O_APPEND offset follows the truncation. No signal is involved.

Bounded memory: while a write is still running at the next tick, entries keep accumulating up
to `MAX_PENDING`; the excess is dropped and counted (`access_log.dropped`, logged at most every
`DROP_LOG_INTERVAL`). A failed write (full disk, closed pipe) drops its lines the same way.
"""
from __future__ import annotations

import asyncio
import os
import select
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from json.encoder import encode_basestring_ascii as _quote   # type: ignore[attr-defined]

import structlog

log = structlog.get_logger("warmfront.access_log")

FLUSH_INTERVAL = 0.25      # seconds between batches
SLICE = 1000               # lines formatted between two yields to the loop (≈ 1 ms)
MAX_PENDING = 65_536       # entries held while the writer is behind (≈ 350 B each); beyond it, dropped
DROP_LOG_INTERVAL = 10.0
STDOUT = "-"

# One entry, as `Proxy.finish` builds it (perf_counter times, seconds):
# (t_end, t_begin, method, target, status, upstream_latency, source, pool, type, member,
#  bytes_in, bytes_out, client_ip)
Entry = tuple[float, float, bytes, bytes, int, float, str, str, str, "str | None", int, int, str]

LINE = ('{"time":"%s.%03dZ","method":%s,"path":%s,"status":%d,"duration_ms":%d.%03d,"upstream_ms":%s,'
        '"source":%s,"pool":%s,"type":%s,"member":%s,"bytes_in":%d,"bytes_out":%d,"client":%s}\n')
QUOTED_CACHE = 4096        # distinct names (sources, members, addresses) kept quoted between lines


def format_lines(entries: list, wall_offset: float, quoted: dict[object, str] | None = None) -> str:
    """JSON lines for `entries`; `wall_offset` turns a perf_counter time into Unix time. `time` is
    when the request finished (as nginx's `$time_local`), ISO 8601 UTC with milliseconds.

    Written for speed (it runs for every request, only later): names repeat from line to line, so
    their JSON form is looked up in `quoted` rather than encoded again, and durations are formatted
    as integers of microseconds (float formatting costs ~0.5 µs a number)."""
    if quoted is None:
        quoted = {}
    if len(quoted) > QUOTED_CACHE:
        quoted.clear()
    q = quoted.get
    out = []
    last_sec = -1
    stamp = ""
    gmtime, strftime = time.gmtime, time.strftime
    for t_end, t_begin, method, target, status, latency, source, pool, rtype, member, b_in, b_out, ip in entries:
        wall = t_end + wall_offset
        sec = int(wall)
        if sec != last_sec:
            last_sec, stamp = sec, strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
        us = int((t_end - t_begin) * 1e6) if t_begin else 0
        if latency:
            up = int(latency * 1e6)
            upstream = "%d.%03d" % (up // 1000, up % 1000)
        else:
            upstream = "null"
        routed = pool != "-"
        out.append(LINE % (
            stamp, int((wall - sec) * 1000),
            (q(method) or _remember(quoted, method, method.decode("latin-1"))) if method else "null",
            _quote(target.decode("utf-8", "backslashreplace")),
            status, us // 1000, us % 1000, upstream,
            (q(source) or _remember(quoted, source, source)) if source else "null",
            (q(pool) or _remember(quoted, pool, pool)) if routed else "null",
            (q(rtype) or _remember(quoted, rtype, rtype)) if routed else "null",
            (q(member) or _remember(quoted, member, member)) if member is not None else "null",
            b_in, b_out,
            q(ip) or _remember(quoted, ip, ip)))
    return "".join(out)


def _remember(quoted: dict[object, str], key: object, text: str) -> str:
    value = quoted[key] = _quote(text)
    return value


class AccessLog:
    """One worker's access log: the list the request path appends to, and the task that empties it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[Entry] = []
        self._quoted: dict[object, str] = {}
        self.dropped = 0                 # lines lost since start (writer behind, or a failed write)
        self._logged_dropped = 0
        self._logged_at = 0.0
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._whole = True               # one write per batch; False for a pipe (PIPE_BUF pieces)
        self._open()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")
        self._writing: Future[None] | None = None
        self._flushing: asyncio.Future[None] | None = None

    def _open(self) -> None:
        if self.path == STDOUT:
            self._fd = 1
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(self._fd)
        self._ino = (st.st_dev, st.st_ino)
        self._whole = stat.S_ISREG(st.st_mode)

    async def run(self) -> None:
        """Every FLUSH_INTERVAL, write what the request path appended (cancelled at shutdown; `close`
        writes the rest)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            # Shielded: a batch taken from `entries` and half formatted must not die with this task.
            self._flushing = asyncio.ensure_future(self.flush())
            await asyncio.shield(self._flushing)

    async def flush(self) -> None:
        entries = self.entries
        if not entries:
            return
        if self._writing is not None and not self._writing.done():
            if len(entries) > MAX_PENDING:
                self._drop(len(entries) - MAX_PENDING)
                del entries[MAX_PENDING:]
            return
        batch = entries[:]
        entries.clear()
        offset = time.time() - time.perf_counter()
        parts = []
        for i in range(0, len(batch), SLICE):
            parts.append(format_lines(batch[i:i + SLICE], offset, self._quoted))
            if i + SLICE < len(batch):
                await asyncio.sleep(0)
        data = "".join(parts).encode()
        self._writing = self._thread.submit(self._write, data, len(batch))

    async def close(self) -> None:
        """Write everything still held (the worker is draining or stopping), then close the file."""
        if self._flushing is not None:
            await self._flushing
        if self._writing is not None:
            await asyncio.wrap_future(self._writing)
            self._writing = None
        await self.flush()
        if self._writing is not None:
            await asyncio.wrap_future(self._writing)
        self._thread.shutdown(wait=True)
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
        self._report_drops(force=True)

    # ------------------------------------------------------------------ the writer thread
    def _write(self, data: bytes, lines: int) -> None:
        try:
            self._follow_rotation()
            if self._whole:
                self._write_all(data)
            else:
                for piece in _pipe_pieces(data):
                    self._write_all(piece)
        except OSError as e:
            self._drop(lines, error=str(e))
        else:
            self._report_drops()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:   # a short write happens only on a full disk or a signal: go on with the rest
            view = view[os.write(self._fd, view):]

    def _follow_rotation(self) -> None:
        if self.path == STDOUT:
            return
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._ino:
            old = self._fd
            self._open()
            os.close(old)
            log.info("access_log.reopened", path=self.path)

    def _drop(self, lines: int, error: str | None = None) -> None:
        self.dropped += lines
        self._report_drops(error=error)

    def _report_drops(self, force: bool = False, error: str | None = None) -> None:
        new = self.dropped - self._logged_dropped
        now = time.monotonic()
        if new and (force or now - self._logged_at >= DROP_LOG_INTERVAL):
            self._logged_dropped, self._logged_at = self.dropped, now
            log.warning("access_log.dropped", lines=new, total=self.dropped, path=self.path, error=error)


def _pipe_pieces(data: bytes) -> list[bytes]:
    """`data` in pieces of whole lines of at most PIPE_BUF bytes (a longer line is a piece alone)."""
    limit = select.PIPE_BUF
    pieces = []
    start = 0
    n = len(data)
    while start < n:
        end = start + limit
        if end >= n:
            end = n
        else:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or n
        pieces.append(data[start:end])
        start = end
    return pieces


def resolve(value: str | None) -> str | None:
    """The control process's check of `access_log`: `-`, None, or an absolute path (workers run in
    another directory) to a file that can be opened for appending, created if missing."""
    if value is None or value == STDOUT:
        return value
    path = os.path.abspath(value)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
    return path
