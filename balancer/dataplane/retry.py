"""Whether a failed upstream attempt is tried again, and how the client is answered if not.

A pure decision: what is known about the attempt in, a `Verdict` out. `ClientConnection.upstream_failed`
acts on it. See DESIGN.md, "Retries".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_ATTEMPTS = 3
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Failure(enum.Enum):
    REFUSED = "refused"   # the connect failed (refused, unreachable, timed out): nothing reached the member
    BROKEN = "broken"     # the connection died, or the response was unparsable or refused
    TIMEOUT = "timeout"   # the member was silent past `timeouts.read`, or past `timeouts.total`


class Action(enum.Enum):
    RECONNECT = "reconnect"   # same choice again on a new connection; not the member's fault
    NEXT_MEMBER = "next"      # counted as the member's failure; another member is tried
    ANSWER = "answer"         # no retry: the client gets `Verdict.status`


@dataclass(frozen=True, slots=True)
class Attempt:
    failure: Failure
    method: bytes
    sent: bool              # the request head was written upstream
    body_replayable: bool   # the request had no body and was read whole (nothing to resend)
    response_started: bool  # a response head (final, or 101) came back
    reused: bool            # the attempt was on a kept-alive connection
    tried: int              # members that already failed this request, not counting this one
    reconnects: int         # RECONNECT verdicts this request already had


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    status: int = 0         # for ANSWER: 502, or 504 after a timeout

    @property
    def counts_as_failure(self) -> bool:
        return self.action is not Action.RECONNECT


RECONNECT = Verdict(Action.RECONNECT)
NEXT_MEMBER = Verdict(Action.NEXT_MEMBER)
BAD_GATEWAY = Verdict(Action.ANSWER, 502)
GATEWAY_TIMEOUT = Verdict(Action.ANSWER, 504)


def decide(a: Attempt) -> Verdict:
    """A refused connect is retried for every method: nothing reached the member (nginx's
    `proxy_next_upstream error`). Once the request was sent, only an idempotent request without a
    body is retried, and only while no response came back. A kept-alive connection that dies
    before any response was most likely closed as idle by the member while we reused it: retried on
    a new connection without blaming the member. A timeout is never retried (the member may still
    be working on it), and no more than MAX_ATTEMPTS members are tried."""
    if a.failure is Failure.TIMEOUT:
        return GATEWAY_TIMEOUT
    replayable = a.method in IDEMPOTENT and a.body_replayable
    if a.response_started:
        return BAD_GATEWAY
    if (a.failure is Failure.BROKEN and a.reused and replayable and a.reconnects < MAX_ATTEMPTS):
        return RECONNECT
    if a.tried + 1 < MAX_ATTEMPTS and (not a.sent or replayable):
        return NEXT_MEMBER
    return BAD_GATEWAY
