"""The retry decision as a table: what is known about a failed attempt → retry, or the answer."""
import pytest

from balancer.dataplane.retry import (BAD_GATEWAY, GATEWAY_TIMEOUT, MAX_ATTEMPTS, NEXT_MEMBER, RECONNECT, Action,
                                      Attempt, Failure, decide)

REFUSED, BROKEN, TIMEOUT = Failure.REFUSED, Failure.BROKEN, Failure.TIMEOUT


def attempt(failure=BROKEN, method=b"GET", sent=True, replayable=True, started=False, reused=False,
            tried=0, reconnects=0) -> Attempt:
    return Attempt(failure, method, sent, replayable, started, reused, tried, reconnects)


@pytest.mark.parametrize("case, expected", [
    # A refused connect: nothing reached the member, so every method goes to the next one.
    (attempt(REFUSED, b"GET", sent=False), NEXT_MEMBER),
    (attempt(REFUSED, b"POST", sent=False, replayable=False), NEXT_MEMBER),
    (attempt(REFUSED, b"PATCH", sent=False, replayable=False), NEXT_MEMBER),
    # ... until MAX_ATTEMPTS members have failed it.
    (attempt(REFUSED, sent=False, tried=MAX_ATTEMPTS - 2), NEXT_MEMBER),
    (attempt(REFUSED, sent=False, tried=MAX_ATTEMPTS - 1), BAD_GATEWAY),
    (attempt(REFUSED, b"POST", sent=False, replayable=False, tried=MAX_ATTEMPTS - 1), BAD_GATEWAY),
    # Sent and broken before any response: only idempotent, body-less requests go again.
    (attempt(BROKEN, b"GET"), NEXT_MEMBER),
    (attempt(BROKEN, b"HEAD"), NEXT_MEMBER),
    (attempt(BROKEN, b"PUT"), NEXT_MEMBER),
    (attempt(BROKEN, b"DELETE"), NEXT_MEMBER),
    (attempt(BROKEN, b"OPTIONS"), NEXT_MEMBER),
    (attempt(BROKEN, b"POST"), BAD_GATEWAY),
    (attempt(BROKEN, b"PATCH"), BAD_GATEWAY),
    (attempt(BROKEN, b"CONNECT"), BAD_GATEWAY),
    (attempt(BROKEN, b"get"), BAD_GATEWAY),          # methods are case-sensitive (RFC 9110 §9.1)
    (attempt(BROKEN, b"PUT", replayable=False), BAD_GATEWAY),   # a body that was streamed on
    (attempt(BROKEN, b"GET", replayable=False), BAD_GATEWAY),   # a GET with a body, or one still arriving
    (attempt(BROKEN, tried=MAX_ATTEMPTS - 1), BAD_GATEWAY),
    # A response head already reached the client: cut short, never retried (the 502 is only counted).
    (attempt(BROKEN, started=True), BAD_GATEWAY),
    (attempt(BROKEN, started=True, reused=True), BAD_GATEWAY),
    (attempt(BROKEN, started=True, sent=False), BAD_GATEWAY),
    # A kept-alive connection that dies before answering: a new connection, not the member's fault.
    (attempt(BROKEN, reused=True), RECONNECT),
    (attempt(BROKEN, reused=True, tried=MAX_ATTEMPTS - 1), RECONNECT),
    (attempt(BROKEN, reused=True, reconnects=MAX_ATTEMPTS - 1), RECONNECT),
    (attempt(BROKEN, reused=True, reconnects=MAX_ATTEMPTS), NEXT_MEMBER),
    (attempt(BROKEN, reused=True, reconnects=MAX_ATTEMPTS, tried=MAX_ATTEMPTS - 1), BAD_GATEWAY),
    # ... but not a request the member may have acted on.
    (attempt(BROKEN, b"POST", reused=True, replayable=False), BAD_GATEWAY),
    (attempt(BROKEN, b"POST", reused=True), BAD_GATEWAY),
    # A timeout is answered 504 and never retried: the member may still be working on it.
    (attempt(TIMEOUT), GATEWAY_TIMEOUT),
    (attempt(TIMEOUT, reused=True), GATEWAY_TIMEOUT),
    (attempt(TIMEOUT, sent=False), GATEWAY_TIMEOUT),
    (attempt(TIMEOUT, started=True), GATEWAY_TIMEOUT),
    (attempt(TIMEOUT, b"POST", replayable=False), GATEWAY_TIMEOUT),
])
def test_retry_decision(case, expected):
    assert decide(case) == expected


def test_only_a_reconnect_spares_the_member():
    assert not RECONNECT.counts_as_failure
    assert NEXT_MEMBER.counts_as_failure and BAD_GATEWAY.counts_as_failure and GATEWAY_TIMEOUT.counts_as_failure


def test_answers_carry_their_status():
    assert (BAD_GATEWAY.action, BAD_GATEWAY.status) == (Action.ANSWER, 502)
    assert (GATEWAY_TIMEOUT.action, GATEWAY_TIMEOUT.status) == (Action.ANSWER, 504)


def test_no_request_is_tried_on_more_than_max_attempts_members():
    tried = 0
    while decide(attempt(REFUSED, sent=False, tried=tried)) is NEXT_MEMBER:
        tried += 1
    assert tried + 1 == MAX_ATTEMPTS
