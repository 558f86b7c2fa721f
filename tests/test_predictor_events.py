"""Events: declared multipliers in their window and scope, learned uplift, events.yaml loading and errors."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from config import ConfigError, default_config_dir
from config.events import load_events
from predictor.engine import Forecaster
from predictor.events import Event, EventBook, UpliftWatch

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()
BIN = 300.0
BINS = T0 + BIN * np.arange(48)  # four hours of 5-minute bins


def campaign(name: str = "sale", multiplier: float | None = 3.0, **scope: str) -> Event:
    (key, value), = (scope or {"source": "acme"}).items()
    return Event(name=name, kind="campaign", start=T0 + 3600, end=T0 + 7200,
                 scope_key=key, scope_value=value, multiplier=multiplier)


# ---------------------------------------------------------------- multipliers
def test_declared_event_lifts_only_its_window_and_scope():
    book = EventBook([campaign(source="acme")])
    inside = (BINS >= T0 + 3600) & (BINS < T0 + 7200)

    acme = book.multipliers({"source": "acme", "type": "api", "pool": "web"}, BINS)
    assert np.all(acme[inside] == 3.0)
    assert np.all(acme[~inside] == 1.0)
    assert inside.sum() == 12

    other = book.multipliers({"source": "globex", "type": "api", "pool": "web"}, BINS)
    assert np.all(other == 1.0)


@pytest.mark.parametrize("scope", [{"type": "api"}, {"pool": "web"}])
def test_type_and_pool_scopes_match_their_key_only(scope):
    book = EventBook([campaign(**scope)])
    hit = book.multipliers({"source": "anyone", "type": "api", "pool": "web"}, BINS)
    miss = book.multipliers({"source": "api", "type": "web", "pool": "other"}, BINS)
    assert hit.max() == 3.0
    assert np.all(miss == 1.0)


def test_overlapping_events_compound():
    book = EventBook([campaign("a", 2.0, source="acme"), campaign("b", 1.5, type="api")])
    m = book.multipliers({"source": "acme", "type": "api"}, BINS)
    assert m.max() == pytest.approx(3.0)
    assert m.min() == 1.0


def test_event_without_multiplier_uses_learned_uplift_of_its_kind():
    book = EventBook([campaign(multiplier=None)])
    keys = {"source": "acme"}
    assert np.all(book.multipliers(keys, BINS) == 1.0)  # nothing learned yet
    for _ in range(30):
        book.learn_uplift("campaign", actual=np.full(12, 20.0), baseline=np.full(12, 10.0))
    m = book.multipliers(keys, BINS)
    assert m.max() == pytest.approx(2.0, rel=0.05)
    assert m.max() == pytest.approx(book.uplift("campaign"))
    assert book.uplift("release") == 1.0


def test_learned_uplift_is_recovered_from_noisy_windows():
    rng = np.random.default_rng(1)
    book = EventBook()
    for _ in range(40):
        baseline = rng.uniform(5, 50, size=24)
        book.learn_uplift("campaign", rng.poisson(2.0 * baseline).astype(float), baseline)
    assert book.uplift("campaign") == pytest.approx(2.0, rel=0.05)


def test_one_window_is_shrunk_towards_one():
    book = EventBook()
    book.learn_uplift("release", np.full(6, 40.0), np.full(6, 10.0))
    assert 1.0 < book.uplift("release") < 4.0 * 0.75


def test_uplift_is_a_ratio_of_sums_and_ignores_empty_baselines():
    book = EventBook(prior_windows=0.0)  # no shrinkage, to see the raw ratio
    # Per-bin ratios would be dominated by the near-zero baseline bin (1000×); the sums say 1.1.
    book.learn_uplift("other", np.array([10.0, 100.0]), np.array([0.01, 100.0]))
    # Nothing usable: its only finite baseline is zero (counting its 5 would make the ratio 1.15).
    book.learn_uplift("other", np.array([5.0, np.nan]), np.array([0.0, 3.0]))
    assert book.uplift("other") == pytest.approx(1.1, rel=0.001)


def test_uplift_watch_learns_only_from_windows_it_saw_begin_and_that_stayed_declared():
    now = [0.0]
    fc = Forecaster(lambda: now[0])
    start = 1000 * BIN   # a bin boundary
    seen = Event("seen", "campaign", start, start + 12 * BIN, "source", "shop")
    late = Event("late", "release", start, start + 12 * BIN, "source", "shop")      # declared mid-window
    dropped = Event("dropped", "other", start, start + 12 * BIN, "source", "shop")  # removed mid-window
    elsewhere = Event("elsewhere", "maintenance", start, start + 12 * BIN, "source", "nobody")
    book = EventBook([seen, dropped, elsewhere])
    watch = UpliftWatch(book)
    learned = []
    for b in range(1000 - 48, 1000 + 14):
        now[0] = b * BIN
        fc.observe(now[0], {"shop": 200.0 if seen.start <= now[0] < seen.end else 100.0})
        if b == 1003:
            book.add(late)
            book.remove("dropped")
        learned += watch.step(fc, lambda sid: {"source": sid})
    assert learned == [seen]
    assert book.uplift("campaign") == pytest.approx(2 ** 0.5)   # 2x over a flat 100, one window
    assert book.uplift("release") == book.uplift("other") == book.uplift("maintenance") == 1.0


def test_add_replaces_by_name_and_remove_returns_the_event():
    book = EventBook([campaign("sale", 3.0)])
    book.add(campaign("sale", 5.0))
    book.add(campaign("later", 2.0, pool="web"))
    assert [e.name for e in book.list()] == ["later", "sale"]
    assert book.get("sale").multiplier == 5.0
    assert book.remove("sale").multiplier == 5.0
    with pytest.raises(KeyError):
        book.remove("sale")
    assert np.all(book.multipliers({"source": "acme"}, BINS) == 1.0)


def test_matching_finds_events_overlapping_a_window():
    book = EventBook([campaign("sale")])
    assert [e.name for e in book.matching({"source": "acme"}, T0, T0 + 3601)] == ["sale"]
    assert book.matching({"source": "acme"}, T0, T0 + 3600) == []
    assert book.matching({"source": "acme"}, T0 + 7200, T0 + 9000) == []


@pytest.mark.parametrize("change, message", [
    ({"end": T0}, "end must be after start"),
    ({"multiplier": 0.0}, "multiplier"),
    ({"pin": 2}, "maintenance"),
    ({"kind": "party"}, "kind"),
])
def test_event_rejects_bad_fields(change, message):
    fields = {"name": "x", "kind": "campaign", "start": T0, "end": T0 + 60,
              "scope_key": "source", "scope_value": "a", **change}
    with pytest.raises(ValueError, match=message):
        Event(**fields)


# ---------------------------------------------------------------- events.yaml
EVENTS = """\
events:
  - name: spring-sale
    kind: campaign
    start: 2024-05-01T09:00:00Z
    end: 2024-05-01T21:00:00Z
    scope: {source: acme}
    multiplier: 3
  - name: search-release
    kind: release
    start: "2024-05-02T14:00:00+02:00"
    duration: 2h
    scope:
      type: search
  - name: db
    kind: maintenance
    start: 2024-05-03 02:00:00
    duration: 30m
    scope: {pool: reports}
    pin: 1
    drain: true
"""


def write(tmp_path, text: str):
    path = tmp_path / "events.yaml"
    path.write_text(text)
    return path


def test_events_yaml_loads_into_events(tmp_path):
    sale, release, db = load_events(write(tmp_path, EVENTS))
    assert (sale.name, sale.kind, sale.scope_key, sale.scope_value, sale.multiplier) == \
        ("spring-sale", "campaign", "source", "acme", 3.0)
    assert sale.start == datetime(2024, 5, 1, 9, tzinfo=timezone.utc).timestamp()
    assert sale.end - sale.start == 12 * 3600
    assert release.start == datetime(2024, 5, 2, 12, tzinfo=timezone.utc).timestamp()
    assert release.end - release.start == 7200
    assert (release.scope_key, release.multiplier) == ("type", None)
    # No UTC offset is read as UTC.
    assert db.start == datetime(2024, 5, 3, 2, tzinfo=timezone.utc).timestamp()
    assert (db.pin, db.drain, db.end - db.start) == (1, True, 1800)


def test_missing_events_file_means_no_events(tmp_path):
    assert load_events(tmp_path / "events.yaml") == []


def test_shipped_events_yaml_is_valid_and_empty():
    assert load_events(default_config_dir() / "events.yaml") == []


def error_of(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_events(write(tmp_path, text))
    return info.value


@pytest.mark.parametrize("old, new, line, key, message", [
    ("multiplier: 3", "multiplier: 0", 7, "events[0].multiplier", "must be > 0"),
    ("multiplier: 3", "multiplier: lots", 7, "events[0].multiplier", "must be a number"),
    ("kind: release", "kind: launch", 9, "events[1].kind", "must be one of"),
    ("end: 2024-05-01T21:00:00Z", "end: 2024-05-01T08:00:00Z", 5, "events[0].end", "must be after start"),
    ("    duration: 2h\n", "    duration: 2h\n    end: 2024-05-02T20:00:00Z\n", 11, "events[1].duration", "not both"),
    ("    end: 2024-05-01T21:00:00Z\n", "", 2, "events[0]", "needs end or duration"),
    ("start: 2024-05-01T09:00:00Z", "start: next tuesday", 4, "events[0].start", "ISO 8601"),
    ("{source: acme}", "{source: acme, pool: web}", 6, "events[0].scope", "exactly one of source, type, pool"),
    ("      type: search", "      kind: search", 13, "events[1].scope.kind", "unknown key"),
    ("    multiplier: 3\n", "    multiplier: 3\n    pin: 2\n", 8, "events[0].pin", "maintenance events only"),
    ("    pin: 1\n", "    pin: -1\n", 19, "events[2].pin", "must be >= 0"),
    ("name: db", "name: spring-sale", 14, "events[2].name", "duplicate event name 'spring-sale'"),
    ("    kind: campaign\n", "", 2, "events[0].kind", "required key is missing"),
    ("    scope: {source: acme}\n", "    scope: {source: acme}\n    scope: {source: b}\n", 7,
     "events[0].scope", "duplicate key"),
])
def test_events_yaml_errors_name_file_line_and_key(tmp_path, old, new, line, key, message):
    assert old in EVENTS
    err = error_of(tmp_path, EVENTS.replace(old, new, 1))
    assert err.file.endswith("events.yaml")
    assert (err.line, err.key) == (line, key), str(err)
    assert message in err.message
    assert str(err).startswith(f"{err.file}:{line}: {key}: ")


def test_events_yaml_must_be_a_mapping_with_a_list(tmp_path):
    assert error_of(tmp_path, "- name: x\n").line == 1
    err = error_of(tmp_path, "events:\n  name: x\n")
    assert (err.line, err.key) == (1, "events")
    assert "must be a list" in err.message
