"""The admin API against its own OpenAPI document: every documented operation, random inputs
(hypothesis): never a 5xx or a traceback, every error JSON with a message."""
import json
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.operator.openapi import openapi_document
from tests.runkit import Warmfront, http, wait_until

DOC = openapi_document()
# Static pool on a port nobody listens on: a pin cannot launch anything however hypothesis sets it.
POOLS = "pools:\n  web:\n    backend: static\n    servers: ['127.0.0.1:9']\n"
ROUTING = "routes:\n  - name: all\n    pool: web\n"
OPERATIONS = [(path, method) for path, ops in DOC["paths"].items() for method in ops
              if not (path == "/admin/reload")]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=10)


def body_for(schema_ref: str):
    schema = DOC["components"]["schemas"][schema_ref.rsplit("/", 1)[-1]]
    props = schema.get("properties", {})
    return st.one_of(JSON, st.fixed_dictionaries({}, optional={k: JSON for k in props}),
                     st.binary(max_size=40))


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("oa")
    (cfg / "pools.yaml").write_text(POOLS)
    (cfg / "routing.yaml").write_text(ROUTING)
    w = Warmfront("--config", str(cfg))
    try:
        assert wait_until(lambda: http(w.admin + "/healthz")[0] == 200, 20), w.tail()
        yield w
    finally:
        w.cleanup()


def test_document_names_every_operator_endpoint(wf):
    code, raw, _ = http(wf.admin + "/admin/openapi.json")
    served = json.loads(raw)
    assert code == 200 and served["openapi"].startswith("3.")
    for path in ["/admin/events", "/admin/sources/{id}", "/admin/costs", "/admin/reload",
                 "/admin/pools/web/scale", "/admin/pools/{name}/members/{id}/drain", "/admin/dashboard"]:
        assert path in served["paths"]      # the served document has a scale path per pool
    assert "/admin/pools/{name}/scale" in DOC["paths"]
    assert served["components"]["schemas"]["ScaleRequest"]["required"] == ["reason"]


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_operation_survives_random_input(wf, path, method):
    op = DOC["paths"][path][method]
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(params=st.fixed_dictionaries({p["name"]: st.sampled_from(["web"]) | st.text(min_size=1, max_size=12)
                                         for p in op.get("parameters", []) if p["in"] == "path"}),
           query=st.dictionaries(st.sampled_from(["since", "until", "format"]), st.text(max_size=12), max_size=3),
           body=body_for(ref) if ref else st.none())
    def check(params, query, body):
        url = wf.admin + re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(params[m.group(1)], safe=""), path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if ref else None)
        code, raw, headers = http(url, {"Content-Type": "application/json"}, data=data, method=method.upper())
        assert code is not None and code < 500, (url, body, raw[:300])
        assert b"Traceback" not in raw
        if code >= 400:
            assert headers["Content-Type"].startswith("application/json")
            assert isinstance(json.loads(raw)["error"], str) and json.loads(raw)["error"]

    check()
