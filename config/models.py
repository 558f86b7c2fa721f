"""Typed configuration: routing.yaml and pools.yaml validated into pydantic models.

Field names here are the contract with balancer/ and pools/. Durations are floats in seconds,
sizes ints in bytes, after parsing the units users write (see config.units).

Rules that involve more than one field raise `config_error(at, message)`: the loader appends
`at` to the failing model's location, so the user is pointed at the key to fix rather than at
the enclosing section.
"""
from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from config.units import ByteSize, Cpus, Duration

CONFIG_ERROR = "config"


def config_error(at: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """A validation error located at `at`, relative to the model raising it."""
    return PydanticCustomError(CONFIG_ERROR, message, {"at": at})


def first_error(err: ValidationError) -> tuple[str, str]:
    """The first problem of `err` as (dotted key, message), with `config_error`'s `at` appended to
    the key: what the admin API answers and what logs name."""
    first = err.errors()[0]
    ctx = first.get("ctx")
    loc = list(first["loc"]) + list(ctx.get("at", ()) if isinstance(ctx, dict) else ())
    return ".".join(str(p) for p in loc) or "-", first["msg"].removeprefix("Value error, ")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+")


def _host_port(value: str, *, min_port: int) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.fullmatch(host):
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:8080 (got {value!r})")
    if not (port.isascii() and port.isdigit() and min_port <= int(port) <= 65535):
        raise ValueError(f"port must be a number from {min_port} to 65535 (got {port!r})")
    return value


# Port 0 asks the OS for a free port, which is what tests and ad-hoc runs want for a listener.
ListenAddress = Annotated[str, AfterValidator(lambda v: _host_port(v, min_port=0))]
ServerAddress = Annotated[str, AfterValidator(lambda v: _host_port(v, min_port=1))]


def _stringify_env(value: Any) -> Any:
    # `PORT: 8080` and `DEBUG: true` are what people write; the environment only holds strings.
    if isinstance(value, dict):
        return {k: _env_str(v) for k, v in value.items()}
    return value


def _env_str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _whole_number(value: Any) -> Any:
    # JSON Schema's `integer` includes 2.0; `true` and 2.5 are still refused (strictly, by int).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


EnvVars = Annotated[dict[str, str], BeforeValidator(_stringify_env)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


# ---------------------------------------------------------------- routing.yaml
class AdminConfig(Strict):
    """The admin listener: health, metrics, status, dashboard and reload."""
    listen: ListenAddress = Field(
        "127.0.0.1:9090", description="HOST:PORT of the admin listener. Default `127.0.0.1:9090`.")
    token_env: NonEmptyStr = Field(
        "WARMFRONT_ADMIN_TOKEN",
        description="Environment variable holding the admin bearer token, required whenever the admin "
                    "listener is not on loopback. Default `WARMFRONT_ADMIN_TOKEN`.")


class TLSConfig(Strict):
    """TLS for the client-facing listener; omit the section to serve plain HTTP."""
    cert: NonEmptyStr = Field(description="Path to a PEM certificate chain. Required.")
    key: NonEmptyStr = Field(description="Path to the PEM private key of `cert`. Required.")


class SourceRule(Strict):
    """Exactly one of the fields is set; rules are tried in order, first non-empty value wins."""
    header: NonEmptyStr | None = Field(None, description="Take the source from this request header, e.g. `X-Tenant`.")
    query: NonEmptyStr | None = Field(None, description="Take the source from this query-string parameter.")
    cookie: NonEmptyStr | None = Field(None, description="Take the source from this cookie.")
    path_segment: int | None = Field(
        None, ge=0, description="Take the source from this 0-based `/`-separated path segment.")
    client_ip: bool | None = Field(None, description="Take the source from the client IP address; set to `true`.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceRule:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise config_error((), "a source rule sets exactly one of "
                                   "header, query, cookie, path_segment, client_ip "
                                   f"(got {', '.join(chosen) or 'none'})")
        if self.client_ip is False:
            raise config_error(("client_ip",), "must be true; remove the rule to stop using the client IP")
        return self


class Timeouts(Strict):
    """Time limits on the client and upstream sides of an exchange."""
    connect: Duration = Field(2.0, description="Upstream TCP connect timeout. Default `2s`.")
    read: Duration = Field(
        60.0, description="Longest upstream silence (no bytes) while a response is awaited or streamed. Default `60s`.")
    total: Duration = Field(0.0, description="Limit on the whole upstream exchange; `0` means none. Default `0`.")
    queue: Duration = Field(
        5.0, description="How long a request waits for a ready member before a 503 with Retry-After. Default `5s`.")
    client_idle: Duration = Field(60.0, description="Idle timeout of a keep-alive client connection. Default `60s`.")
    client_header: Duration = Field(
        30.0, gt=0, description="Deadline for a whole request head, from its first byte (a trickled head does not "
                                "extend it); beyond it the answer is 408 and the connection closes. Default `30s`.")
    client_body: Duration = Field(
        30.0, gt=0, description="Time allowed for a request body before `limits.min_body_rate` applies: a body must "
                                "be complete within `client_body` + its bytes so far / `min_body_rate` (time the "
                                "proxy itself held reading back does not count). Default `30s`.")


class Limits(Strict):
    """Size limits on requests, protecting the proxy's memory."""
    max_header_bytes: ByteSize = Field(
        65536, ge=1, description="Largest request line plus headers; beyond it the answer is 431. Default `64k`.")
    max_body_bytes: ByteSize = Field(
        1024 ** 3, description="Largest request body; beyond it the answer is 413; `0` means unlimited. Default `1g`.")
    min_body_rate: ByteSize = Field(
        500, description="Slowest average request-body rate (bytes per second) accepted once `timeouts.client_body` "
                         "has passed; a slower body gets 408 and the connection closes. `0` disables. Default `500`.")
    max_response_header_bytes: ByteSize = Field(
        65536, ge=1024, description="Largest response head (status line plus headers) accepted from a member; beyond "
                                    "it the client gets 502. Default `64k`.")
    max_connections: int = Field(
        0, ge=0, description="Client connections held open at once; at the cap an idle or still-sending-its-head "
                             "connection is closed to make room, else the new one is refused. `0` derives it from "
                             "the open-file limit: (limit − 256) / 2, leaving one upstream per client and room for "
                             "health checks. Default `0`.")


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class HistoryConfig(Strict):
    """Per-minute request counters kept in SQLite (or a PostgreSQL database replicas share) for forecasting."""
    url: str | None = Field(
        None, description="Database for the counters: `postgresql://user@host:5432/db` (or `postgres://`) is one "
                          "PostgreSQL database every replica writes into, counts adding up (keep the password in "
                          "`PGPASSWORD` or `~/.pgpass`, not here). Default: the SQLite file `history.sqlite3` in "
                          "`state_dir`.")
    flush_interval: Duration = Field(
        5.0, gt=0, description="How often in-memory counters are written to the database. Default `5s`.")
    retention: Duration = Field(30 * 86400.0, gt=0, description="How long counters are kept. Default `30d`.")
    max_sources: int = Field(
        1000, ge=1, description="Top-K sources kept by name; the rest count as `other`. Default `1000`.")

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, _ = value.partition("://")
        if not sep or scheme.lower() not in ("postgresql", "postgres"):
            # only the scheme is echoed: the rest may hold a password
            shown = f"scheme {scheme!r}" if sep and _URL_SCHEME.fullmatch(scheme) else "no scheme"
            raise ValueError(f"must be a postgresql:// or postgres:// URL, or left out for SQLite (got {shown})")
        return value


class ReplicasConfig(Strict):
    """Several warmfront replicas in front of one service (behind DNS or an L4 balancer): every replica
    proxies and records history into the shared PostgreSQL database (`history.url`); the one holding
    the replica set's lock on that database plans and drives the pools, the others follow it."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")] = Field(
        ..., description="The replica set's name: every replica of one service uses the same. Members are "
                         "owned by the set (`warmfront.instance=wf-<name>`), so a new leader adopts them.")
    advertise: NonEmptyStr | None = Field(
        None, description="How others reach this replica's proxy (HOST:PORT), shown in status. Default: "
                          "the listen address.")
    heartbeat: Duration = Field(
        0.5, gt=0, le=10, description="How often a replica renews its row, reads the leader's routing and, "
                                      "when not leading, tries for the lock. Default `0.5s`.")


class PredictorConfig(Strict):
    """The live forecaster's schedule and its statsmodels tier."""
    refit_every: Duration = Field(
        900.0, gt=0, description="How often Holt-Winters is refitted for every series (and the statsmodels tier "
                                 "refreshed). Default `15m`.")
    statsmodels_top_n: int = Field(
        2, ge=0, le=100,
        description="Series with most traffic that also get statsmodels ETS, SARIMAX and STL in their blend once they "
                    "have three days of history (each fit 0.05–1 s in a worker thread; importing statsmodels adds "
                    "≈ 250 MB). `0` turns the tier off. Default `2`.")


class ResourcesConfig(Strict):
    """Measuring what members use (CPU, memory, network) and what each request type costs."""
    enabled: bool = Field(True, description="Sample every managed member's CPU, memory and network. Default `true`.")
    interval: Duration = Field(
        10.0, gt=0, description="How often members are sampled; each sample is one row of the per-type cost "
                                "regression. Default `10s`.")
    window: Duration = Field(
        3600.0, gt=0, description="Samples the per-type cost estimates are fitted on (the most recent). "
                                  "Default `1h`.")
    recommend_window: Duration = Field(
        86400.0, gt=0, description="Per-member usage (and OOM kills) the `cpus` and `memory` recommendation "
                                   "looks back over, as Kubernetes' VPA does. Default `24h`.")


_METHOD = re.compile(r"[A-Z]+")


class RouteMatch(Strict):
    """Conditions a request must meet for the route to apply; all given ones must hold."""
    host: NonEmptyStr | None = Field(
        None, description="Exact host (port ignored), or `*.example.com` for a suffix match. Default: any host.")
    path_prefix: str = Field("/", pattern=r"^/", description="Path prefix, starting with `/`. Default `/`.")
    methods: list[str] | None = Field(
        None, min_length=1, description="HTTP methods, case-insensitive, e.g. `[GET, HEAD]`. Default: any method.")
    headers: dict[str, str] | None = Field(
        None, description="Headers that must equal the given value; `*` means present. Default: none.")

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is None:
            return None
        upper = [m.upper() for m in methods]
        for method in upper:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return upper


class Route(Strict):
    """Sends matching requests to a pool and labels them with a request type."""
    name: NonEmptyStr = Field(description="Unique route name, used in logs and metrics. Required.")
    match: RouteMatch = Field(default_factory=RouteMatch, description="When the route applies. Default: every request.")
    pool: NonEmptyStr = Field(description="Name of the pool in pools.yaml that serves the route. Required.")
    type: NonEmptyStr = Field(
        "default", description="Request type, the unit of profiling and forecasting. Default `default`.")


class RoutingConfig(Strict):
    """routing.yaml: listeners, traffic sources, limits and routes."""
    listen: ListenAddress = Field(
        "127.0.0.1:8080", description="HOST:PORT the proxy accepts clients on; port 0 picks a free one. "
                                      "Default `127.0.0.1:8080`.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The admin listener.")
    state_dir: NonEmptyStr = Field(
        "state", description="Directory for request history and runtime state. Default `state`.")
    workers: Annotated[int, BeforeValidator(_whole_number)] | None = Field(
        None, ge=1, le=256, description="Data-plane worker processes sharing the listener (`--workers` "
                                        "overrides it); a change needs a restart. Default: one per CPU "
                                        "warmfront may run on.")
    access_log: NonEmptyStr | None = Field(
        None, description="File each worker appends one JSON line per request to (relative to the working "
                          "directory; reopened after logrotate moves it), or `-` for standard output; "
                          "`--access-log` overrides it; a change needs a restart. Default: none (off).")
    tls: TLSConfig | None = Field(None, description="TLS for the client listener. Default: plain HTTP.")
    sources: list[SourceRule] = Field(
        default_factory=lambda: [SourceRule(client_ip=True)], min_length=1,
        description="How a request's traffic source is identified; rules are tried in order. "
                    "Default `[{client_ip: true}]`.")
    preserve_host: bool = Field(
        True, description="Pass the client's Host header upstream instead of the member's address. Default `true`.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Time limits.")
    limits: Limits = Field(default_factory=Limits, description="Request size limits.")
    history: HistoryConfig = Field(default_factory=HistoryConfig, description="Request history for forecasting.")
    predictor: PredictorConfig = Field(default_factory=PredictorConfig, description="The live forecaster.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig,
                                       description="Member resource measurement and per-type costs.")
    replicas: ReplicasConfig | None = Field(
        None, description="Run as one of several replicas sharing `history.url` (PostgreSQL); one leads. "
                          "Default: a single warmfront.")
    routes: list[Route] = Field(
        min_length=1, description="Routes, tried in order; the first match wins. At least one is required.")

    @model_validator(mode="after")
    def _unique_route_names(self) -> RoutingConfig:
        seen: set[str] = set()
        for index, route in enumerate(self.routes):
            if route.name in seen:
                raise config_error(("routes", index, "name"), f"duplicate route name {route.name!r}")
            seen.add(route.name)
        return self

    @model_validator(mode="after")
    def _replicas_share_a_database(self) -> RoutingConfig:
        if self.replicas is not None and self.history.url is None:
            raise config_error(("replicas",), "replicas share history and elect their leader in PostgreSQL: "
                                              "set history.url to a postgresql:// URL")
        return self


# ---------------------------------------------------------------- pools.yaml
MAX_POOL_MEMBERS = 1000     # a hard ceiling on capacity.max: past it a typo, not a plan
MemberCount = Annotated[int, Field(ge=0, le=MAX_POOL_MEMBERS), BeforeValidator(_whole_number)]   # admin API pins


class HealthCheck(Strict):
    """Active health check of each member: an HTTP GET, or only a TCP connection."""
    enabled: bool = Field(
        True, description="`false` turns active checks off: members are routed from the start and only passive "
                          "ejection (`ejection:`) takes failing ones out. Static pools only. Default `true`.")
    type: Literal["http", "tcp"] = Field(
        "http", description="`http` GETs `path` and judges the status; `tcp` only opens a connection. Default `http`, "
                            "except in a static pool whose `health:` sets no `path`: `tcp` (an ordinary server has "
                            "no health endpoint).")
    path: str = Field(
        "/healthz", pattern=r"^/", description="http: path probed with GET. Default `/healthz`.")
    expect_status: str = Field(
        "200-399", pattern=r"^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$",
        description="http: statuses that count as healthy, `LOW-HIGH` or one code; `200-499` takes any answer "
                    "but a server error as healthy. Default `200-399`.")
    interval: Duration = Field(2.0, gt=0, description="Time between checks. Default `2s`.")
    timeout: Duration = Field(1.0, gt=0, description="Time allowed for one check. Default `1s`.")
    healthy_threshold: int = Field(
        1, ge=1, description="Consecutive passes before a member counts as healthy. Default `1`.")
    unhealthy_threshold: int = Field(
        3, ge=1, description="Consecutive failures before a member counts as unhealthy. Default `3`.")

    @property
    def healthy_statuses(self) -> tuple[int, int]:
        """`expect_status` as the lowest and highest healthy status."""
        low, _, high = self.expect_status.partition("-")
        return int(low), int(high or low)

    @model_validator(mode="after")
    def _status_range_ascends(self) -> HealthCheck:
        low, high = self.healthy_statuses
        if low > high:
            raise config_error(("expect_status",), f"must be LOW-HIGH with LOW <= HIGH (got {self.expect_status!r})")
        return self


class Capacity(Strict):
    """How many routable members the pool may have and how busy each should run."""
    min: int = Field(1, ge=0, description="Members always kept ready (baseline tier); `0` allows scale to zero. "
                                          "Default `1`.")
    max: int = Field(4, ge=1, le=MAX_POOL_MEMBERS,
                     description=f"Most members ever ready at once, across all tiers; at most {MAX_POOL_MEMBERS}. "
                                 "Default `4`.")
    target_utilization: float = Field(
        0.7, gt=0, le=1, description="Share of `concurrency` the planner aims to use per member, in (0, 1]. "
                                     "Default `0.7`.")

    @model_validator(mode="after")
    def _max_at_least_min(self) -> Capacity:
        if self.max < self.min:
            raise config_error(("max",), f"must be >= min ({self.max} < {self.min})")
        return self


class Scaling(Strict):
    """How the planner sizes the pool from forecasts and live load."""
    mode: Literal["forecast-and-scale", "forecast-only", "reactive"] = Field(
        "forecast-and-scale", description="`forecast-and-scale` acts on forecasts; `forecast-only` computes and "
                                          "shows what it would do but scales reactively; `reactive` ignores "
                                          "forecasts. Default `forecast-and-scale`.")
    quantile: float = Field(0.7, gt=0.5, lt=1, description="Forecast quantile capacity is planned for: the risk "
                                                           "knob. Default `0.7` (chosen on folds of every shared "
                                                           "trace: bench/defaults.py).")
    service_time: Duration = Field(0.05, gt=0, description="Service time per request used until one is learned "
                                                           "from observed upstream latency. Default `50ms`.")
    launch_lead: Duration = Field(60.0, gt=0, description="Time from launch to a ready member (cold start); the "
                                                          "shadow pool covers the forecast peak over it. Default `60s`.")
    scale_down_delay: Duration = Field(300.0, ge=0, description="Scale-down stabilisation: the highest "
                                                                "recommendation of this window wins. Default `5m`.")
    cooldown: Duration = Field(60.0, ge=0, description="A member that just became ready is not retired within "
                                                       "this. Default `60s`.")
    panic_window: Duration = Field(6.0, gt=0, description="Window over which in-flight above `panic_threshold` x "
                                                          "target triggers panic scaling. Default `6s`.")
    panic_threshold: float = Field(2.0, gt=1, description="In-flight / target capacity ratio that starts panic "
                                                          "mode. Default `2.0`.")
    stable_window: Duration = Field(60.0, gt=0, description="Window over which live utilisation is averaged for "
                                                            "the burst tier. Default `60s`.")
    burst_utilization: float = Field(0.8, gt=0, le=1, description="Utilisation the burst tier sizes live load to; "
                                                                  "above the pool's target because the forecast holds "
                                                                  "the headroom and shadows activate in milliseconds. "
                                                                  "Default `0.8`.")
    rightsize: Literal["off", "recommend", "apply"] = Field(
        "recommend", description="Per-member `cpus` and `memory` from measured use (a high percentile plus a "
                                 "margin, raised after an OOM kill or throttling): `recommend` shows it in status "
                                 "and /metrics; `apply` also launches new members (docker, swarm) with it; `off` "
                                 "computes none. Default `recommend`.")
    scale_up_window: Duration = Field(10.0, gt=0, description="The burst tier scales up on the in-flight requests "
                                                              "averaged over this short window when they are above "
                                                              "the `stable_window` average, and down on the long one "
                                                              "only (as Knative does); equal to `stable_window` turns "
                                                              "it off. Default `10s`.")


class Shadow(Strict):
    """Members prepared ahead of forecast need but not routed until activated."""
    state: Literal["none", "running", "paused", "stopped"] = Field(
        "none", description="What shadow members are kept as: `running` (instant), `paused`, `stopped` "
                            "(cheaper, slower to activate) or `none`. Default `none`.")
    size: int = Field(0, ge=0, description="Shadow members kept prepared and unrouted, ready to activate. Default `0`.")
    burst_quantile: float = Field(0.98, ge=0, lt=1, description="Shadow members cover this quantile of the burst "
                                                               "heights seen over `burst_history` (what each forecaster "
                                                               "bin's requests needed beyond what its forecast planned "
                                                               "for); `0` turns it off. Default `0.98` (chosen on "
                                                               "folds of every shared trace: bench/defaults.py).")
    burst_history: Duration = Field(7 * 86400.0, gt=0, description="How far back burst heights are kept. "
                                                                   "Default `7d`.")
    cpus: Cpus | None = Field(None, description="Shrink running and paused shadow members in place to this CPU "
                                                "limit (docker), restored at activation. Default: no shrink.")

    @model_validator(mode="after")
    def _size_needs_state(self) -> Shadow:
        if self.size > 0 and self.state == "none":
            raise config_error(("size",), "size > 0 requires state running, paused or stopped")
        return self


class Warmup(Strict):
    """Requests sent to a new member before it is routable, to fill caches and JITs."""
    path: str = Field("/", pattern=r"^/", description="Path requested with GET during warm-up. Default `/`.")
    requests: int = Field(0, ge=0, description="Number of warm-up requests; `0` turns warm-up off. Default `0`.")


class Ejection(Strict):
    """Passive health: members failing live requests are taken out for a growing back-off."""
    consecutive_failures: int = Field(5, ge=1, description="Failed requests in a row that eject a member. Default `5`.")
    base_time: Duration = Field(10.0, description="First ejection period; doubles on each repeat. Default `10s`.")
    max_time: Duration = Field(300.0, description="Longest ejection period. Default `5m`.")

    @model_validator(mode="after")
    def _max_at_least_base(self) -> Ejection:
        if self.max_time < self.base_time:
            raise config_error(("max_time",), "must be >= base_time")
        return self


class DockerSpec(Strict):
    """Container spec for the `docker` backend."""
    image: NonEmptyStr = Field(description="Image to run, e.g. `myapp:1.4`. Required.")
    command: str | None = Field(
        None, description="Command overriding the image's; `{port}` is replaced by the member's port. "
                          "Default: the image's.")
    env: EnvVars = Field(default_factory=dict, description="Extra environment variables. Default: none.")
    container_port: int | None = Field(
        None, ge=1, le=65535, description="Port the app listens on inside the container. Default: the member's port.")
    network: NonEmptyStr = Field(
        "host", description="`host`, `publish` (map a host port) or a user network name. Default `host`.")
    cpus: Cpus | None = Field(None, description="CPU limit, e.g. `0.5` or `500m`. Default: unlimited.")
    memory: ByteSize | None = Field(None, description="Memory limit, e.g. `256m`. Default: unlimited.")
    on_exit: Literal["keep", "remove"] = Field(
        "keep", description="When warmfront exits: `keep` members running for a fast restart (they are "
                            "adopted by the next run with the same state dir) or `remove` them. Default `keep`.")
    init: bool = Field(True, description="Run an init process (tini) as PID 1 so SIGTERM reaches the app and "
                                         "stops are prompt. Default `true`.")
    host: str | None = Field(None, description="Docker daemon URL, e.g. `unix:///var/run/docker.sock`. "
                                               "Default: from the environment (DOCKER_HOST).")

    @model_validator(mode="after")
    def _port_for_bridged_modes(self) -> DockerSpec:
        if self.network != "host" and self.container_port is None:
            raise config_error(("container_port",), f"required with network {self.network!r} "
                                                    "(the port the app listens on inside the container)")
        return self


class SwarmSpec(Strict):
    """Service spec for the `swarm` backend: one Swarm service (one replica) per member."""
    image: NonEmptyStr = Field(description="Image every member's service runs, e.g. `myapp:1.4`. Required.")
    command: str | None = Field(
        None, description="Command overriding the image's; `{port}` is replaced by the member's port. "
                          "Default: the image's.")
    env: EnvVars = Field(default_factory=dict, description="Extra environment variables. Default: none.")
    network: NonEmptyStr = Field(
        "host", description="`host` (the task listens on its node's address) or an overlay network name "
                            "warmfront reaches tasks on by their IP. Default `host`.")
    cpus: Cpus | None = Field(None, description="CPU limit per task, e.g. `0.5` or `500m`. Default: unlimited.")
    memory: ByteSize | None = Field(None, description="Memory limit per task, e.g. `256m`. Default: unlimited.")
    init: bool = Field(True, description="Run an init process (tini) as PID 1 so SIGTERM reaches the app and "
                                         "stops are prompt. Default `true`.")
    constraints: list[NonEmptyStr] = Field(
        default_factory=list, description="Placement constraints, e.g. `node.labels.tier==web`. Default: none.")
    placement: list[Annotated[str, Field(pattern=r"^spread=\S+$")]] = Field(
        default_factory=list, description="Placement preferences as `spread=<node attribute>`, e.g. "
                                          "`spread=node.labels.zone`. Default: none.")
    on_exit: Literal["keep", "remove"] = Field(
        "keep", description="When warmfront exits: `keep` the services for the next run with the same state dir "
                            "to adopt, or `remove` them. Default `keep`.")
    host: str | None = Field(None, description="Engine URL of a Swarm manager, e.g. `tcp://manager:2376`. "
                                               "Default: from the environment (DOCKER_HOST).")

    def check_shadow(self, shadow: Shadow) -> None:
        """Paused shadows and `shadow.cpus` act on the task's container through the engine at `host`, so
        such members are placed on that engine's own node; placement that contradicts it is refused."""
        if shadow.state != "paused" and shadow.cpus is None:
            return
        what = "shadow.state paused" if shadow.state == "paused" else "shadow.cpus"
        instead = "shadow.state running" if shadow.state == "paused" else "no shadow.cpus"
        if self.placement:
            raise config_error(("placement",), f"cannot be used with {what}: a task is paused and resized through "
                                               "the engine at swarm.host, so every member runs on that manager's "
                                               f"node and cannot be spread (use {instead})")
        for c in self.constraints:
            if re.sub(r"\s", "", c) == "node.role==worker":
                raise config_error(("constraints",), f"{c!r} cannot be used with {what}: only the engine at "
                                                     "swarm.host (a manager's) is reachable to pause or resize a task")


class Pool(Strict):
    """A set of interchangeable members serving one request profile, and its capacity rules."""
    backend: Literal["process", "static", "docker", "swarm"] = Field(
        "process", description="What runs members: `process` (local processes), `static` (unmanaged servers), "
                               "`docker` or `swarm`. Default `process`.")
    command: str | None = Field(
        None, description="process: command line run per member, split like a shell would; `{port}` is replaced "
                          "by the member's port.")
    env: EnvVars = Field(default_factory=dict, description="process: extra environment variables. Default: none.")
    servers: list[ServerAddress] = Field(
        default_factory=list, description="static: HOST:PORT of each unmanaged server.")
    docker: DockerSpec | None = Field(None, description="docker: the container spec.")
    swarm: SwarmSpec | None = Field(None, description="swarm: the service spec.")
    concurrency: int = Field(32, ge=1, description="Requests one member serves at once. Default `32`.")
    health: HealthCheck = Field(default_factory=HealthCheck, description="Active health check.")
    capacity: Capacity = Field(default_factory=Capacity, description="Member counts and target utilisation.")
    shadow: Shadow = Field(default_factory=Shadow, description="Pre-warmed, unrouted members.")
    scaling: Scaling = Field(default_factory=Scaling, description="Forecast-driven and reactive sizing.")
    warmup: Warmup = Field(default_factory=Warmup, description="Warm-up requests for new members.")
    ejection: Ejection = Field(default_factory=Ejection, description="Passive health ejection.")
    slow_start: Duration = Field(
        10.0, description="Ramp-up for members that were not pre-warmed; `0` turns it off. Default `10s`.")
    startup_timeout: Duration = Field(
        30.0, gt=0, description="Longest wait from launch to the first passing health check. Default `30s`.")
    drain_timeout: Duration = Field(
        30.0, description="Longest wait for in-flight requests before a member is stopped. Default `30s`.")
    stop_timeout: Duration = Field(5.0, description="Time from SIGTERM to SIGKILL. Default `5s`.")

    @model_validator(mode="after")
    def _backend_needs_its_section(self) -> Pool:
        if self.backend == "process":
            self._check_process_command()
        elif self.backend == "static" and not self.servers:
            raise config_error(("servers",), "backend static needs at least one HOST:PORT in servers")
        elif self.backend == "docker" and self.docker is None:
            raise config_error(("docker",), "backend docker needs a docker: section with at least an image")
        elif self.backend == "swarm" and self.swarm is None:
            raise config_error(("swarm",), "backend swarm needs a swarm: section with at least an image")
        elif self.backend == "swarm" and self.swarm is not None:
            try:
                self.swarm.check_shadow(self.shadow)
            except PydanticCustomError as e:
                raise config_error(("swarm", *(e.context or {}).get("at", ())), e.message()) from None
        return self

    @model_validator(mode="after")
    def _static_checks_connect_by_default(self) -> Pool:
        if self.backend == "static" and not self.health.model_fields_set & {"type", "path"}:
            # Servers warmfront does not run have no health endpoint it can count on; accepting
            # connections is what every one of them does.
            self.health = self.health.model_copy(update={"type": "tcp"})
        elif self.backend != "static" and not self.health.enabled:
            raise config_error(("health", "enabled"), f"only static pools can turn active checks off: a "
                                                      f"{self.backend} member is routed once its check passes")
        return self

    def _check_process_command(self) -> None:
        if not self.command:
            raise config_error(("command",), "backend process needs a command containing {port}")
        if "{port}" not in self.command:
            raise config_error(("command",), "must contain {port}, where the member's port goes")
        try:
            shlex.split(self.command)
        except ValueError as err:
            raise config_error(("command",), f"cannot be split into arguments: {err}") from None


class PoolsConfig(Strict):
    """pools.yaml: the pools routes can send traffic to."""
    pools: dict[str, Pool] = Field(min_length=1, description="Pools by name.")


class Config(Strict):
    """Both files, checked against each other."""
    routing: RoutingConfig
    pools: dict[str, Pool]
    directory: str | None = None             # where the YAML was read from; None when loaded from text

    @model_validator(mode="after")
    def _routes_name_pools(self) -> Config:
        for index, route in enumerate(self.routing.routes):
            if route.pool not in self.pools:
                known = ", ".join(sorted(self.pools)) or "none"
                raise config_error(("routing", "routes", index, "pool"),
                                   f"unknown pool {route.pool!r} (pools.yaml defines: {known})")
        return self
