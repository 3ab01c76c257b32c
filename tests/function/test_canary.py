"""Canary routing: the pure decision, its settings, the HTTP glue and the stable fallback."""

from __future__ import annotations

import logging

import flask
import numpy as np
import pytest

from recognizer import canary, params
from recognizer.canary import Route
from recognizer.config import Settings
from recognizer.errors import InvalidParameter
from recognizer.model_client import (
    ModelAnswer,
    ModelClient,
    ModelTimeout,
    ModelUnavailable,
    UnknownModel,
)
from recognizer.service import Recognizer
from tests.conftest import ROOT
from tests.support.model_stand_in import ModelStandIn

SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()


# -- the pure decision ------------------------------------------------------------------


def test_a_bucket_is_the_same_everywhere():
    # Fixed values: Python's salted hash() would differ between processes and hosts.
    assert canary.bucket("id:alice") == 45.58
    assert canary.bucket("addr:10.0.0.1") == 98.92


def test_buckets_spread_evenly_over_zero_to_one_hundred():
    buckets = [canary.bucket(f"id:client-{n}") for n in range(10_000)]
    assert all(0 <= b < 100 for b in buckets)
    assert 900 <= sum(b < 10 for b in buckets) <= 1100
    assert 4800 <= sum(b < 50 for b in buckets) <= 5200


def test_a_client_keeps_its_version_and_a_bigger_share_only_adds_clients():
    keys = [f"id:client-{n}" for n in range(2_000)]
    for key in keys:
        first = canary.unpinned(key, 10, "stable", "canary")
        assert all(canary.unpinned(key, 10, "stable", "canary") == first for _ in range(3))
    at_10 = {k for k in keys if canary.unpinned(k, 10, "stable", "canary").label == "canary"}
    at_25 = {k for k in keys if canary.unpinned(k, 25, "stable", "canary").label == "canary"}
    assert at_10 < at_25


def test_zero_percent_sends_nobody_and_one_hundred_everybody_to_canary():
    keys = [f"id:client-{n}" for n in range(1_000)]
    assert {canary.unpinned(k, 0, "stable", "canary") for k in keys} == {Route("stable")}
    assert {canary.unpinned(k, 100, "stable", "canary") for k in keys} == {
        Route("canary", fallback="stable")
    }


def test_the_client_id_header_wins_over_the_address():
    assert canary.client_key("alice", "10.0.0.1") == "id:alice"
    assert canary.client_key("  alice ", None) == "id:alice"
    assert canary.client_key(None, "10.0.0.1") == "addr:10.0.0.1"
    assert canary.client_key("   ", "10.0.0.1") == "addr:10.0.0.1"
    assert canary.client_key(None, None) == "addr:"


# -- settings ---------------------------------------------------------------------------


def test_canary_settings_default_to_no_canary_traffic():
    settings = Settings.from_env({})
    assert (settings.canary_percent, settings.canary_label) == (0.0, "canary")


def test_canary_settings_are_read_from_the_environment():
    settings = Settings.from_env({"CANARY_PERCENT": "12.5", "CANARY_LABEL": "candidate"})
    assert (settings.canary_percent, settings.canary_label) == (12.5, "candidate")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CANARY_PERCENT": "101"}, "CANARY_PERCENT must be between 0 and 100"),
        ({"CANARY_PERCENT": "nan"}, "CANARY_PERCENT must be between 0 and 100"),
        ({"CANARY_PERCENT": "-1"}, "CANARY_PERCENT must not be negative"),
        ({"CANARY_PERCENT": "ten"}, "CANARY_PERCENT must be a number"),
        ({"CANARY_LABEL": "a b"}, "CANARY_LABEL must be 1-64"),
        ({"CANARY_PERCENT": "5", "CANARY_LABEL": "stable"}, "give the canary its own"),
    ],
)
def test_bad_canary_settings_are_a_startup_error_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


# -- the HTTP glue: pins first, then the client's bucket --------------------------------


def route_for(query: str = "", headers: dict[str, str] | None = None, percent: float = 100):
    settings = Settings(canary_percent=percent)
    app = flask.Flask(__name__)
    with app.test_request_context(
        f"/predict?{query}", headers=headers or {}, environ_base={"REMOTE_ADDR": "10.0.0.1"}
    ):
        client = params.client_key(flask.request)
        return params.route(flask.request.args, settings, client, params.TOKEN_HOLDER)


def test_unpinned_requests_follow_the_canary_share():
    assert route_for(percent=100) == Route("canary", fallback="stable")
    assert route_for(percent=0) == Route("stable")


def test_the_bucket_comes_from_the_client_id_else_the_address():
    # bucket("id:alice") is 45.58 and bucket("addr:10.0.0.1") is 98.92.
    assert route_for(headers={"X-Client-Id": "alice"}, percent=50).label == "canary"
    assert route_for(percent=50).label == "stable"


def test_pins_bypass_the_canary_and_have_no_fallback():
    assert route_for("version=1") == Route("stable", version=1)
    assert route_for("label=canary", percent=0) == Route("canary")
    assert route_for("label=stable") == Route("stable")
    with pytest.raises(InvalidParameter):
        route_for("label=a%20b")
    with pytest.raises(InvalidParameter):
        route_for("version=1&label=stable")


# -- the stable fallback ----------------------------------------------------------------


class FakeModel:
    """Answers per label; a label mapped to an exception raises it."""

    def __init__(self, labels: dict[str, int | Exception]) -> None:
        self.labels = labels
        self.asked: list[str] = []

    def predict_label(self, images: np.ndarray, label: str) -> ModelAnswer:
        self.asked.append(label)
        answer = self.labels[label]
        if isinstance(answer, Exception):
            raise answer
        probabilities = np.tile(np.eye(10, dtype=np.float32)[7], (len(images), 1))
        return ModelAnswer(probabilities, np.full(len(images), 7), answer, label)

    def predict_version(self, images: np.ndarray, version: int) -> ModelAnswer:
        raise AssertionError("not pinned in these tests")


class ListStore:
    def __init__(self) -> None:
        self.saved: list = []

    def save(self, records) -> None:
        self.saved.extend(records)


def recognize(model: FakeModel, route: Route) -> list:
    store = ListStore()
    recognizer = Recognizer(model, store, "mnist", 40_000_000, 40_000_000, 1024)  # type: ignore[arg-type]
    records = recognizer.recognize([SEVEN], route).records
    assert store.saved == records
    return records


@pytest.mark.parametrize(
    "failure",
    [
        UnknownModel("the model server has no label 'canary'"),
        ModelUnavailable("label 'canary' points at no AVAILABLE version"),
    ],
)
def test_a_canary_that_cannot_answer_falls_back_to_stable_and_the_record_says_so(failure):
    model = FakeModel({"canary": failure, "stable": 2})
    [record] = recognize(model, Route("canary", fallback="stable"))
    assert model.asked == ["canary", "stable"]
    assert (record.model_version, record.model_label) == (2, "stable")


def test_a_working_canary_answers_and_is_recorded_as_canary():
    [record] = recognize(FakeModel({"canary": 3, "stable": 2}), Route("canary", fallback="stable"))
    assert (record.model_version, record.model_label) == (3, "canary")


def test_a_pinned_label_never_falls_back():
    model = FakeModel({"canary": UnknownModel("no label 'canary'"), "stable": 2})
    with pytest.raises(UnknownModel):
        recognize(model, Route("canary"))
    assert model.asked == ["canary"]


def test_a_timeout_does_not_fall_back():
    model = FakeModel({"canary": ModelTimeout("slow"), "stable": 2})
    with pytest.raises(ModelTimeout):
        recognize(model, Route("canary", fallback="stable"))
    assert model.asked == ["canary"]


def test_fallbacks_are_logged_once_a_minute_not_once_a_request(caplog):
    model = FakeModel({"canary": UnknownModel("no label 'canary'"), "stable": 2})
    recognizer = Recognizer(model, ListStore(), "mnist", 40_000_000, 40_000_000, 1024)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="recognizer.service"):
        for _ in range(5):
            recognizer.recognize([SEVEN], Route("canary", fallback="stable"))
    [warning] = caplog.records
    assert "label 'canary' cannot answer" in warning.getMessage()


# -- a label moved and its old version unloaded while the function still had it cached ----


def test_one_retry_after_forgetting_the_label_survives_an_unloaded_version():
    with ModelStandIn(versions=(2, 3), labels={"canary": 3}) as server:
        client = ModelClient(server.url, "mnist", timeout_seconds=5, label_cache_seconds=60)
        images = np.zeros((1, 28, 28), dtype=np.uint8)
        assert client.predict_label(images, "canary").version == 3
        server.labels["canary"] = 2  # the rollout moved the label, then unloaded version 3
        server.states[3] = "END"
        assert client.predict_label(images, "canary").version == 2
        assert server.predicted == [3, 3, 2]
