"""config/: units, validation rules, file:line: key errors, the shipped YAML and the JSON schema."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import ConfigError, default_config_dir, json_schema, load_config, load_config_text
from config.units import CPUS_PATTERN, DURATION_PATTERN, SIZE_PATTERN, parse_cpus, parse_duration, parse_size

ROUTING = """\
listen: 127.0.0.1:8080
routes:
  - name: a
    pool: web
"""
POOLS = """\
pools:
  web:
    command: app --port {port}
"""


def error_of(routing: str = ROUTING, pools: str = POOLS) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(routing, pools)
    return str(info.value)


# ---------------------------------------------------------------- units
@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0), ("1.5s", 1.5),
    ("1h30m", 5400.0), (" 10s ", 10.0), ("0", 0.0), ("2.5", 2.5), (".5s", 0.5), (7, 7.0), (0.25, 0.25),
])
def test_duration_units_parse_to_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, size", [
    ("512", 512), (512, 512), ("64k", 65536), ("256m", 256 * 1024 ** 2), ("1g", 1024 ** 3),
    ("1.5G", 3 * 1024 ** 3 // 2), ("10MiB", 10 * 1024 ** 2), ("10MB", 10 * 1024 ** 2), ("2kb", 2048),
    ("1GiB", 1024 ** 3), ("100b", 100), ("256 m", 256 * 1024 ** 2), (1024.0, 1024),
])
def test_size_units_parse_to_bytes_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, cpus", [("0.5", 0.5), (0.5, 0.5), ("500m", 0.5), ("2", 2.0), (2, 2.0), ("1500m", 1.5)])
def test_cpu_amounts_parse_including_millicores(text, cpus):
    assert parse_cpus(text) == pytest.approx(cpus)


@pytest.mark.parametrize("parse, value", [
    (parse_duration, "5 parsecs"), (parse_duration, "s"), (parse_duration, ""), (parse_duration, "-1s"),
    (parse_duration, -1), (parse_duration, True), (parse_duration, float("inf")), (parse_duration, "1e3"),
    (parse_duration, [1]), (parse_duration, "٣s"),
    (parse_size, "1.5q"), (parse_size, "k"), (parse_size, 1.5), (parse_size, -4), (parse_size, None),
    (parse_cpus, "0"), (parse_cpus, 0), (parse_cpus, "500u"), (parse_cpus, float("nan")),
])
def test_bad_unit_values_raise_value_error(parse, value):
    with pytest.raises(ValueError):
        parse(value)


@pytest.mark.parametrize("pattern, parse, samples", [
    (DURATION_PATTERN, parse_duration, ["30s", "250ms", "1h30m", "2.5", "5 parsecs", "1e3", "-1s", "s", ""]),
    (SIZE_PATTERN, parse_size, ["512", "64k", "10MiB", "1.5G", "2kb", "1.5q", "k", "-4", "4x"]),
    (CPUS_PATTERN, parse_cpus, ["0.5", "500m", "2", "500u", "m"]),
])
def test_schema_patterns_accept_exactly_what_the_parsers_accept(pattern, parse, samples):
    for sample in samples:
        try:
            parse(sample)
            parsed = True
        except ValueError:
            parsed = False
        # "0" CPUs matches the pattern but fails the > 0 rule; that is a range, not a format, problem.
        assert bool(re.search(pattern, sample)) == parsed, sample


def test_unit_strings_reach_the_models_as_numbers():
    config = load_config_text(ROUTING + "timeouts:\n  connect: 250ms\nlimits:\n  max_body_bytes: 10m\n",
                              POOLS + "    docker: {image: x, cpus: 500m, memory: 256m}\n")
    assert config.routing.timeouts.connect == 0.25
    assert config.routing.limits.max_body_bytes == 10 * 1024 ** 2
    assert config.pools["web"].docker.cpus == 0.5
    assert config.pools["web"].docker.memory == 256 * 1024 ** 2


# ---------------------------------------------------------------- shipped config
def test_shipped_config_loads_with_the_documented_defaults():
    config = load_config(default_config_dir())
    routing, web = config.routing, config.pools["web"]
    assert config.directory == str(default_config_dir())
    assert (routing.listen, routing.admin.listen, routing.state_dir) == ("127.0.0.1:8080", "127.0.0.1:9090", "state")
    assert [rule.model_dump(exclude_none=True) for rule in routing.sources] == [{"header": "X-Tenant"},
                                                                               {"client_ip": True}]
    assert [(r.match.path_prefix, r.pool, r.type) for r in routing.routes] == [
        ("/api/", "web", "api"), ("/static/", "web", "static"), ("/", "web", "page")]
    assert (web.backend, web.command, web.concurrency) == ("process", "warmfront demo-backend --port {port}", 32)
    assert (web.health.path, web.health.interval) == ("/healthz", 1.0)
    assert (web.capacity.min, web.capacity.max, web.capacity.target_utilization) == (2, 4, 0.7)
    assert (web.shadow.state, web.shadow.size) == ("running", 1)
    assert (web.warmup.path, web.warmup.requests) == ("/", 5)
    assert (web.drain_timeout, web.stop_timeout) == (10.0, 3.0)


def test_load_config_names_files_by_their_path(tmp_path):
    (tmp_path / "routing.yaml").write_text(ROUTING)
    (tmp_path / "pools.yaml").write_text(POOLS + "    concurrency: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    err = info.value
    assert (err.file, err.line, err.key, err.message) == (str(tmp_path / "pools.yaml"), 4, "pools.web.concurrency",
                                                          "must be >= 1")
    assert str(err) == f"{tmp_path / 'pools.yaml'}:4: pools.web.concurrency: must be >= 1"


def test_missing_file_is_named(tmp_path):
    (tmp_path / "routing.yaml").write_text(ROUTING)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'pools.yaml'}: file not found")) as info:
        load_config(tmp_path)
    assert (info.value.line, info.value.key) == (0, "-")


def test_both_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path / 'routing.yaml'}: file not found\n{tmp_path / 'pools.yaml'}: file not found"


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'nope'))}: directory not found$"):
        load_config(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'file'))}: not a directory$"):
        load_config(tmp_path / "file")


def test_non_utf8_file_reports_the_line(tmp_path):
    (tmp_path / "routing.yaml").write_bytes(ROUTING.encode() + b"state_dir: \xff\n")
    (tmp_path / "pools.yaml").write_text(POOLS)
    with pytest.raises(ConfigError, match=r"routing\.yaml:5: -: not UTF-8 text"):
        load_config(tmp_path)


# ---------------------------------------------------------------- validation rules, exact lines
POOL_HEAD = "pools:\n  web:\n"


@pytest.mark.parametrize("pools, expected", [
    (POOL_HEAD + "    command: a {port}\n    capacity:\n      min: 3\n      max: 2\n",
     "pools.yaml:6: pools.web.capacity.max: must be >= min (2 < 3)"),
    (POOL_HEAD + "    command: a {port}\n    capacity:\n      min: -1\n",
     "pools.yaml:5: pools.web.capacity.min: must be >= 0"),
    (POOL_HEAD + "    command: a {port}\n    capacity:\n      target_utilization: 0\n",
     "pools.yaml:5: pools.web.capacity.target_utilization: must be > 0"),
    (POOL_HEAD + "    command: a {port}\n    capacity:\n      target_utilization: 1.2\n",
     "pools.yaml:5: pools.web.capacity.target_utilization: must be <= 1"),
    (POOL_HEAD + "    command: a {port}\n    shadow:\n      size: -1\n",
     "pools.yaml:5: pools.web.shadow.size: must be >= 0"),
    (POOL_HEAD + "    command: a {port}\n    shadow:\n      state: none\n      size: 2\n",
     "pools.yaml:6: pools.web.shadow.size: size > 0 requires state running, paused or stopped"),
    (POOL_HEAD + "    command: a {port}\n    concurrency: 0\n",
     "pools.yaml:4: pools.web.concurrency: must be >= 1"),
    (POOL_HEAD + "    command: a {port}\n    health:\n      unhealthy_threshold: 0\n",
     "pools.yaml:5: pools.web.health.unhealthy_threshold: must be >= 1"),
    (POOL_HEAD + "    command: a {port}\n    drain_timeout: -5s\n",
     "pools.yaml:4: pools.web.drain_timeout: must be a duration like 30s, 250ms, 5m, 1h or 2d (got '-5s')"),
    (POOL_HEAD + "    command: a {port}\n    stop_timeout: -5\n",
     "pools.yaml:4: pools.web.stop_timeout: must be >= 0"),
    (POOL_HEAD + "    backend: process\n",
     "pools.yaml:2: pools.web.command: backend process needs a command containing {port}"),
    (POOL_HEAD + "    command: app --port 8000\n",
     "pools.yaml:3: pools.web.command: must contain {port}, where the member's port goes"),
    (POOL_HEAD + "    backend: static\n",
     "pools.yaml:2: pools.web.servers: backend static needs at least one HOST:PORT in servers"),
    (POOL_HEAD + "    backend: static\n    servers:\n      - 127.0.0.1:8001\n      - 127.0.0.1:99999\n",
     "pools.yaml:6: pools.web.servers[1]: port must be a number from 1 to 65535 (got '99999')"),
    (POOL_HEAD + "    backend: static\n    servers: [localhost]\n",
     "pools.yaml:4: pools.web.servers[0]: must be HOST:PORT, e.g. 127.0.0.1:8080 (got 'localhost')"),
    (POOL_HEAD + "    backend: docker\n",
     "pools.yaml:2: pools.web.docker: backend docker needs a docker: section with at least an image"),
    (POOL_HEAD + "    backend: swarm\n",
     "pools.yaml:2: pools.web.swarm: backend swarm needs a swarm: section with at least an image"),
    (POOL_HEAD + "    backend: docker\n    docker:\n      command: x\n",
     "pools.yaml:4: pools.web.docker.image: required key is missing"),
    (POOL_HEAD + "    backend: kubernetes\n",
     "pools.yaml:3: pools.web.backend: must be one of 'process', 'static', 'docker' or 'swarm', got 'kubernetes'"),
    (POOL_HEAD + "    command: a {port}\n    capacty: {}\n",
     "pools.yaml:4: pools.web.capacty: unknown key (did you mean 'capacity'?)"),
    (POOL_HEAD + "    command: a {port}\n    concurrency: lots\n",
     "pools.yaml:4: pools.web.concurrency: must be an integer, got the string 'lots'"),
    (POOL_HEAD + "    command: a {port}\n    health: /healthz\n",
     "pools.yaml:4: pools.web.health: must be a mapping, got the string '/healthz'"),
    ("pools: {}\n", "pools.yaml:1: pools: must not be empty"),
    ("# nothing yet\npool:\n  web: {}\n", "pools.yaml:2: pool: unknown key (did you mean 'pools'?)"),
])
def test_pool_rules_point_at_the_offending_key(pools, expected):
    assert error_of(pools=pools) == expected


@pytest.mark.parametrize("routing, expected", [
    ("listen: localhost\nroutes: [{name: a, pool: web}]\n",
     "routing.yaml:1: listen: must be HOST:PORT, e.g. 127.0.0.1:8080 (got 'localhost')"),
    ("admin:\n  listen: 127.0.0.1:http\nroutes: [{name: a, pool: web}]\n",
     "routing.yaml:2: admin.listen: port must be a number from 0 to 65535 (got 'http')"),
    ("routes:\n  - name: a\n    pool: web\n  - name: b\n    pool: db\n",
     "routing.yaml:5: routes[1].pool: unknown pool 'db' (pools.yaml defines: web)"),
    ("routes:\n  - name: a\n    pool: web\n  - name: a\n    pool: web\n",
     "routing.yaml:4: routes[1].name: duplicate route name 'a'"),
    ("routes: []\n", "routing.yaml:1: routes: must not be empty"),
    ("listen: 127.0.0.1:8080\n", "routing.yaml:1: routes: required key is missing"),
    ("routes:\n  - name: a\n    type: api\n", "routing.yaml:2: routes[0].pool: required key is missing"),
    ("sources:\n  - header: X-Tenant\n    client_ip: true\nroutes: [{name: a, pool: web}]\n",
     "routing.yaml:2: sources[0]: a source rule sets exactly one of header, query, cookie, path_segment, "
     "client_ip (got header, client_ip)"),
    ("sources:\n  - {}\nroutes: [{name: a, pool: web}]\n",
     "routing.yaml:2: sources[0]: a source rule sets exactly one of header, query, cookie, path_segment, "
     "client_ip (got none)"),
    ("timeouts:\n  connect: 2s\n  read: forever\nroutes: [{name: a, pool: web}]\n",
     "routing.yaml:3: timeouts.read: must be a duration like 30s, 250ms, 5m, 1h or 2d (got 'forever')"),
    ("routes:\n  - name: a\n    pool: web\n    match:\n      path_prefix: api/\n",
     "routing.yaml:5: routes[0].match.path_prefix: must start with /"),
    ("routes:\n  - name: a\n    pool: web\n    match:\n      methods: [GET, 'P OST']\n",
     "routing.yaml:5: routes[0].match.methods: 'P OST' is not an HTTP method"),
])
def test_routing_rules_point_at_the_offending_key(routing, expected):
    assert error_of(routing=routing) == expected


def test_methods_are_upper_cased():
    config = load_config_text("routes:\n  - {name: a, pool: web, match: {methods: [get, Head]}}\n", POOLS)
    assert config.routing.routes[0].match.methods == ["GET", "HEAD"]


def test_env_scalars_become_strings():
    config = load_config_text(ROUTING, POOLS + "    env: {PORT_HINT: 8080, DEBUG: true, RATIO: 0.5}\n")
    assert config.pools["web"].env == {"PORT_HINT": "8080", "DEBUG": "true", "RATIO": "0.5"}


def test_merge_keys_share_settings_and_errors_find_the_overriding_line():
    pools = POOL_HEAD + "    command: a {port}\n    concurrency: 8\n  api:\n    <<: *base\n    concurrency: 0\n"
    pools = pools.replace("  web:\n", "  web: &base\n")
    assert error_of(pools=pools) == "pools.yaml:7: pools.api.concurrency: must be >= 1"
    config = load_config_text(ROUTING, pools.replace("concurrency: 0", "shadow: {state: paused}"))
    assert (config.pools["api"].concurrency, config.pools["api"].command) == (8, "a {port}")


def test_every_wrong_key_is_reported_in_line_order():
    pools = POOL_HEAD + "    command: a {port}\n    capacity: {min: -1}\n    concurrency: 0\n"
    assert error_of(pools=pools) == ("pools.yaml:4: pools.web.capacity.min: must be >= 0\n"
                                     "pools.yaml:5: pools.web.concurrency: must be >= 1")


def test_mistakes_in_both_files_and_in_independent_pools_are_all_reported(tmp_path):
    (tmp_path / "routing.yaml").write_text("timeouts:\n  connect: 2x\nroutes: [{name: a, pool: web}]\n")
    (tmp_path / "pools.yaml").write_text(POOL_HEAD + "    command: a {port}\n    concurency: 4\n"
                                         "  api:\n    command: b {port}\n    capacity: {min: 3, max: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    err = info.value
    assert [str(problem).removeprefix(f"{tmp_path}/") for problem in err.problems] == [
        "routing.yaml:2: timeouts.connect: must be a duration like 30s, 250ms, 5m, 1h or 2d (got '2x')",
        "pools.yaml:4: pools.web.concurency: unknown key (did you mean 'concurrency'?)",
        "pools.yaml:7: pools.api.capacity.max: must be >= min (2 < 3)",
    ]
    assert str(err) == "\n".join(str(problem) for problem in err.problems)
    assert (err.file, err.line, err.key) == (str(tmp_path / "routing.yaml"), 2, "timeouts.connect")


def test_a_yaml_error_in_one_file_does_not_stop_the_other_being_checked():
    problems = error_of(routing="routes: [\n", pools=POOL_HEAD + "    command: a {port}\n    concurrency: 0\n")
    assert re.fullmatch(r"routing\.yaml:2: -: invalid YAML: .*\npools\.yaml:4: pools\.web\.concurrency: must be >= 1",
                        problems)


def test_a_missing_key_is_not_reported_beside_the_typo_that_names_it():
    assert error_of(routing="routes:\n  - name: a\n    pol: web\n") == \
        "routing.yaml:3: routes[0].pol: unknown key (did you mean 'pool'?)"
    assert error_of(routing="routes:\n  - name: a\n    typ: api\n") == (
        "routing.yaml:2: routes[0].pool: required key is missing\n"
        "routing.yaml:3: routes[0].typ: unknown key (did you mean 'type'?)")


# ---------------------------------------------------------------- YAML-level problems
@pytest.mark.parametrize("routing, expected", [
    ("routes:\n  - name: a\n   pool: web\n", r"^routing\.yaml:3: -: invalid YAML: .*\(column 4\)$"),
    ("routes: [\n", r"^routing\.yaml:2: -: invalid YAML: .*"),
    ("listen: 'unclosed\n", r"^routing\.yaml:2: -: invalid YAML: .*"),
    ("a: 1\n---\nb: 2\n", r"^routing\.yaml:2: -: invalid YAML: but found another document \(column 1\)$"),
    ("state_dir: !!int nine\n", r"^routing\.yaml:1: -: invalid YAML: cannot read 'nine' as !!int"),
    ("state_dir: 2024-02-30\n", r"^routing\.yaml:1: -: invalid YAML: cannot read '2024-02-30' as !!timestamp"),
    ("listen: x\n\n  \x07\n", r"^routing\.yaml:3: -: invalid YAML: control character U\+0007 is not allowed$"),
    ("", r"^routing\.yaml:1: -: file is empty"),
    ("# only a comment\n", r"^routing\.yaml:1: -: file is empty"),
    ("\n\n- a\n- b\n", r"^routing\.yaml:3: -: expected a mapping of keys at the top level, got a list$"),
    ("just text\n", r"^routing\.yaml:1: -: expected a mapping of keys at the top level, got the string"),
    ("a: " + "[" * 5000, r"^routing\.yaml:1: -: invalid YAML: nested too deeply$"),
])
def test_yaml_problems_report_file_and_line(routing, expected):
    assert re.search(expected, error_of(routing=routing))


def test_duplicate_keys_are_errors_at_the_second_key():
    routing = "routes:\n  - name: a\n    pool: web\n    pool: api\n"
    assert error_of(routing=routing) == "routing.yaml:4: routes[0].pool: duplicate key"
    pools = "pools:\n  web: {command: 'a {port}'}\n  web: {}\n"
    assert error_of(pools=pools) == "pools.yaml:3: pools.web: duplicate key"


def test_recursive_anchors_are_a_config_error_not_a_crash():
    assert error_of(routing="loop: &x [*x]\nroutes: *x\n").startswith("routing.yaml:")


# ---------------------------------------------------------------- never a traceback
def _only_config_errors(routing: str, pools: str) -> None:
    try:
        load_config_text(routing, pools)
    except ConfigError as err:
        for line in str(err).split("\n"):
            assert re.match(r"^(routing|pools)\.yaml:\d+: \S.*: .+", line), str(err)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_arbitrary_text_only_raises_config_error(routing, pools):
    _only_config_errors(routing, pools)
    _only_config_errors(ROUTING, pools)
    _only_config_errors(routing, POOLS)


# Keys the models know, so generated structures get past "unknown key" into the deeper rules.
_KEYS = st.sampled_from(["routes", "pools", "web", "name", "pool", "match", "methods", "capacity", "min", "max",
                         "shadow", "size", "state", "backend", "command", "servers", "timeouts", "connect",
                         "sources", "header", "client_ip", "docker", "memory", "cpus", "env", "listen"]) | st.text()
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
            | st.sampled_from(["30s", "1g", "500m", "{port}", "127.0.0.1:0", "web", "static", "running"]))
_YAMLISH = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_YAMLISH, _YAMLISH)
def test_arbitrary_yaml_structures_only_raise_config_error(routing, pools):
    _only_config_errors(yaml.safe_dump(routing), yaml.safe_dump({"pools": pools}))


_SHIPPED = yaml.safe_load((default_config_dir() / "pools.yaml").read_text())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_SHIPPED["pools"]["web"])), _YAMLISH)
def test_any_value_in_a_valid_pool_only_raises_config_error(key, value):
    pools = {"pools": {"web": {**_SHIPPED["pools"]["web"], key: value}}}
    _only_config_errors(ROUTING, yaml.safe_dump(pools))


# ---------------------------------------------------------------- JSON schema
def test_json_schema_is_json_with_a_described_key_for_every_field():
    schemas = json.loads(json.dumps(json_schema()))
    assert set(schemas) == {"routing.yaml", "pools.yaml"}
    assert "capacity" in json.dumps(schemas["pools.yaml"])
    for schema in schemas.values():
        for definition in [schema, *schema.get("$defs", {}).values()]:
            for name, prop in definition.get("properties", {}).items():
                assert prop.get("description"), f"{definition['title']}.{name} has no description"


def test_json_schema_lets_unit_fields_be_strings_or_numbers():
    timeouts = json_schema()["routing.yaml"]["$defs"]["Timeouts"]["properties"]["connect"]
    assert {branch["type"] for branch in timeouts["anyOf"]} == {"number", "string"}
    assert re.search(timeouts["anyOf"][1]["pattern"], "250ms")
