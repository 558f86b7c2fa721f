"""The response-framing choice as tables: the member's head in, how the client's body is delimited
and which connections stay reusable out."""
import pytest

from balancer.dataplane.framing import Body, Interim, final, interim

NONE, LENGTH, CHUNKED, CLOSE = Body.NONE, Body.LENGTH, Body.CHUNKED, Body.CLOSE
TE = b"Transfer-Encoding: chunked\r\n\r\n"
END = b"\r\n"
CLOSE_TE = b"Connection: close\r\n" + TE
CLOSE_END = b"Connection: close\r\n" + END


def head(status=200, is_head=False, version="1.1", keep=True, upgrade=False, member_keep=True, lengths=0,
         chunked=False):
    return final(status, is_head, version, keep, upgrade, member_keep, lengths, chunked)


@pytest.mark.parametrize("kw, body, until_close, reusable, client_keep, tail", [
    # Content-Length: forwarded as is; both connections live on.
    (dict(lengths=1), LENGTH, False, True, True, END),
    (dict(lengths=1, version="1.0"), LENGTH, False, True, True, END),
    (dict(lengths=1, keep=False), LENGTH, False, True, False, CLOSE_END),
    # Chunked from the member: re-chunked by warmfront for a 1.1 client.
    (dict(chunked=True), CHUNKED, False, True, True, TE),
    # ... and close-delimited for a 1.0 client, which cannot read chunks.
    (dict(chunked=True, version="1.0"), CLOSE, False, True, False, CLOSE_END),
    # Neither: the member's body ends at its close (read until close); never reused.
    (dict(), CHUNKED, True, False, True, TE),
    (dict(version="1.0"), CLOSE, False, False, False, CLOSE_END),
    (dict(member_keep=False), CHUNKED, True, False, True, TE),
    # An HTTP/1.0 member or Connection: close from it: its connection is done after this response.
    (dict(lengths=1, member_keep=False), LENGTH, False, False, True, END),
    (dict(chunked=True, member_keep=False), CHUNKED, False, False, True, TE),
    # No body whatever the headers say: HEAD, 204, 304.
    (dict(is_head=True, lengths=1), NONE, False, False, True, END),   # the parser stops at a HEAD's head
    (dict(is_head=True), NONE, False, False, True, END),
    (dict(is_head=True, chunked=True), NONE, False, False, True, END),
    (dict(status=204), NONE, False, True, True, END),
    (dict(status=304), NONE, False, True, True, END),
    (dict(status=304, lengths=1), NONE, False, True, True, END),
    (dict(status=204, version="1.0"), NONE, False, True, True, END),
    (dict(status=304, keep=False), NONE, False, True, False, CLOSE_END),
    # A member that saw an upgrade offer and refused it (a final status): not reused.
    (dict(upgrade=True, lengths=1), LENGTH, False, False, True, END),
    (dict(upgrade=True, chunked=True), CHUNKED, False, False, True, TE),
    (dict(upgrade=True, status=204), NONE, False, False, True, END),
    # The client's request is not read whole (or it asked to close): its connection closes.
    (dict(keep=False, chunked=True), CHUNKED, False, True, False, CLOSE_TE),
    (dict(keep=False), CHUNKED, True, False, False, CLOSE_TE),
    # Other statuses frame the same way as 200.
    (dict(status=500, lengths=1), LENGTH, False, True, True, END),
    (dict(status=404, chunked=True), CHUNKED, False, True, True, TE),
    (dict(status=205), CHUNKED, True, False, True, TE),
])
def test_final_response_framing(kw, body, until_close, reusable, client_keep, tail):
    f = head(**kw)
    assert not f.refused
    assert (f.body, f.until_close, f.upstream_reusable, f.client_keep_alive, f.tail) == \
        (body, until_close, reusable, client_keep, tail)


@pytest.mark.parametrize("kw, reason", [
    # Heads a smuggler wants read two ways (RFC 9112 §6.3): refused, whatever else they say.
    (dict(lengths=2), "more than one Content-Length"),
    (dict(lengths=3, chunked=True), "more than one Content-Length"),
    (dict(lengths=1, chunked=True), "both Content-Length and Transfer-Encoding"),
    (dict(lengths=1, chunked=True, status=204), "both Content-Length and Transfer-Encoding"),
    (dict(lengths=1, chunked=True, is_head=True), "both Content-Length and Transfer-Encoding"),
    (dict(lengths=2, status=304), "more than one Content-Length"),
])
def test_ambiguous_heads_are_refused(kw, reason):
    f = head(**kw)
    assert f.refused == reason
    assert not f.upstream_reusable and not f.client_keep_alive


@pytest.mark.parametrize("status, upgrade, version, expected", [
    (100, False, "1.1", Interim.RELAY),
    (103, False, "1.1", Interim.RELAY),
    (102, True, "1.1", Interim.RELAY),
    (100, False, "1.0", Interim.DROP),          # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
    (103, True, "1.0", Interim.DROP),
    (101, True, "1.1", Interim.SWITCH),
    (101, True, "1.0", Interim.SWITCH),
    (101, False, "1.1", Interim.REFUSE),        # a switch nobody asked for
    (101, False, "1.0", Interim.REFUSE),
])
def test_interim_heads(status, upgrade, version, expected):
    assert interim(status, upgrade, version) is expected


def test_framings_are_shared_not_built_per_response():
    assert head(lengths=1) is head(lengths=1)
