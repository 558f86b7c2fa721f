"""Logging setup: structlog events with stable names, JSON lines for machines, colour for humans.

Callers log `log.info("member.ejected", member=..., pool=...)`: the event name is the contract
(dashboards and alerts match on it), the keys carry the detail. Standard-library loggers
(aiohttp, asyncio) go through the same renderer so one process writes one format.
"""
from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class StderrLogger:
    """structlog's output: one line to whatever `sys.stderr` is when the event is logged, and never an
    exception. A log line that cannot be written (stderr closed, a pipe whose reader left, a full
    disk) is dropped: logging is how a failure is reported, so it must not become one — a raise from
    a `log.warning` in a pool manager's error handler would end that manager's loop."""

    def msg(self, message: str) -> None:
        try:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


def _stderr_logger(*args: object) -> StderrLogger:
    return StderrLogger()


class _SafeStreamHandler(logging.StreamHandler):
    """The standard library's side, equally quiet on a stream that is gone (and on `sys.stderr` at emit time)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr   # not setStream: that flushes the old stream, which may be closed
        super().emit(record)       # its errors go to handleError

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Log to stderr at `level`; `json=None` picks JSON lines unless stderr is a terminal."""
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}") from None
    if json is None:
        json = not sys.stderr.isatty()

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )

    handler = _SafeStreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
