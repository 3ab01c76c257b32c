"""Server-side batching (--enable_batching): merged calls, TF Serving's limits, real REST."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from serving_testlib import Deployment, expected_digit, image

from serving import ModelServer
from serving.__main__ import build_parser
from serving.batching import MIN_SPLIT_ROWS, QUEUE_FULL, Batcher, BatchingOptions
from serving.errors import ConfigError, ServingError, invalid_argument

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "batching.config"


class RecordingServable:
    """Doubles its input and records the batch size of every call; `gate` can hold calls."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.gate = gate
        self.fail = fail
        self.started = threading.Event()

    def check_inputs(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> object:
        if set(inputs) != {"x"}:
            raise invalid_argument("input size does not match signature")
        return SimpleNamespace(name=signature_name or "serving_default")

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(inputs["x"]))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ServingError("INTERNAL", "the model broke")
        return {"y": inputs["x"] * 2}


def options(**overrides: int) -> BatchingOptions:
    values = {"max_batch_size": 8, "batch_timeout_micros": 0, "max_enqueued_batches": 10}
    return BatchingOptions(**{**values, "num_batch_threads": 1, **overrides})


@pytest.fixture
def batchers() -> Callable[[BatchingOptions], Batcher]:
    made: list[Batcher] = []

    def make(batching: BatchingOptions) -> Batcher:
        made.append(Batcher(batching))
        return made[-1]

    yield make
    for batcher in made:
        batcher.close()


def run_concurrently(batcher: Batcher, servable: object, sizes: list[int]) -> list[np.ndarray]:
    """One thread per request; request n holds values n*100, n*100+1, ..."""

    def one(n: int) -> np.ndarray:
        x = np.arange(sizes[n]) + 100 * n
        return batcher.run(servable, "", {"x": x})["y"]

    with ThreadPoolExecutor(len(sizes)) as pool:
        return list(pool.map(one, range(len(sizes))))


def test_concurrent_requests_share_one_call_and_each_gets_its_own_rows(batchers):
    servable = RecordingServable()
    batcher = batchers(options(max_batch_size=8, batch_timeout_micros=5_000_000))
    started = time.monotonic()
    results = run_concurrently(batcher, servable, [1] * 8)
    assert time.monotonic() - started < 5, "a full batch must not wait for the timeout"
    assert servable.calls == [8]
    for n, result in enumerate(results):
        assert result.tolist() == [2 * 100 * n]


def test_a_lone_request_waits_for_company_at_most_the_timeout(batchers):
    servable = RecordingServable()
    batcher = batchers(options(batch_timeout_micros=50_000))
    started = time.monotonic()
    result = batcher.run(servable, "", {"x": np.array([1, 2, 3])})
    elapsed = time.monotonic() - started
    assert result["y"].tolist() == [2, 4, 6]
    assert servable.calls == [3]
    assert 0.04 <= elapsed < 2


def test_a_batch_never_holds_more_than_max_batch_size(batchers):
    servable = RecordingServable()
    batcher = batchers(options(max_batch_size=4, batch_timeout_micros=200_000))
    results = run_concurrently(batcher, servable, [3, 3, 1])
    assert sorted(servable.calls) in ([3, 4], [1, 3, 3])
    assert all(size <= 4 for size in servable.calls)
    assert [r.tolist() for r in results] == [[0, 2, 4], [200, 202, 204], [400]]


def test_a_request_larger_than_a_batch_is_refused_like_tf_serving(batchers):
    batcher = batchers(options(max_batch_size=4))
    with pytest.raises(ServingError) as raised:
        batcher.run(RecordingServable(), "", {"x": np.zeros(5)})
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.message == "Task size 5 is larger than maximum input batch size 4"


def test_a_malformed_request_fails_alone_before_joining_a_batch(batchers):
    servable = RecordingServable()
    batcher = batchers(options())
    with pytest.raises(ServingError, match="does not match signature"):
        batcher.run(servable, "", {"wrong": np.zeros(1)})
    assert batcher.run(servable, "", {"x": np.array([4])})["y"].tolist() == [8]
    assert servable.calls == [1]


def test_a_full_queue_answers_unavailable(batchers):
    gate = threading.Event()
    servable = RecordingServable(gate)
    batcher = batchers(options(max_batch_size=1, max_enqueued_batches=1))
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher.run, servable, "", {"x": np.array([1])})
        assert servable.started.wait(5)  # the only batch thread is now busy
        queued = pool.submit(batcher.run, servable, "", {"x": np.array([2])})
        deadline = time.monotonic() + 5
        while batcher._queued == 0 and time.monotonic() < deadline:  # until it is enqueued
            time.sleep(0.01)
        with pytest.raises(ServingError) as raised:
            batcher.run(servable, "", {"x": np.array([3])})
        gate.set()
        assert running.result(5)["y"].tolist() == [2]
        assert queued.result(5)["y"].tolist() == [4]
    assert raised.value.code == "UNAVAILABLE"
    assert raised.value.message == QUEUE_FULL


def test_a_failed_batch_fails_every_request_in_it(batchers):
    servable = RecordingServable(fail=True)
    batcher = batchers(options(max_batch_size=4, batch_timeout_micros=5_000_000))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.run, servable, "", {"x": np.array([n])}) for n in range(4)]
        errors = [future.exception(10) for future in futures]
    assert servable.calls == [4]
    assert all(isinstance(e, ServingError) and e.code == "INTERNAL" for e in errors)


def test_shipped_config_and_defaults():
    assert BatchingOptions.from_file(SHIPPED_CONFIG) == BatchingOptions(
        max_batch_size=64, batch_timeout_micros=0, max_enqueued_batches=100, num_batch_threads=2
    )
    assert BatchingOptions.from_file(None) == BatchingOptions()


def test_an_invalid_parameters_file_is_a_config_error(tmp_path: Path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(ConfigError, match="must be positive"):
        BatchingOptions.from_file(bad)
    bad.write_text("no_such_field: 1\n")
    with pytest.raises(ConfigError, match="Invalid batching parameters"):
        BatchingOptions.from_file(bad)


def test_command_line_flags_match_tensorflow_model_server():
    args = build_parser().parse_args(
        ["--enable_batching=true", "--batching_parameters_file", str(SHIPPED_CONFIG)]
    )
    assert args.enable_batching is True
    assert args.batching_parameters_file == SHIPPED_CONFIG
    assert build_parser().parse_args([]).enable_batching is False


def test_batching_server_answers_concurrent_rest_clients_correctly(
    deployment: Deployment, start_server: Callable[..., ModelServer], tmp_path: Path
):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(labels={"stable": 1})
    parameters = tmp_path / "batching.config"
    parameters.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n")
    server = start_server(
        deployment,
        enable_batching=True,
        batching_parameters_file=parameters,
        allow_version_labels_for_unavailable_models=True,
    )
    routes = {"/versions/1": "bucket", "/versions/2": "flipped", "/labels/stable": "bucket"}

    def client(seed: int) -> list[str]:
        wrong = []
        with requests.Session() as session:
            for n in range(6):
                route = list(routes)[(seed + n) % len(routes)]
                values = [(seed * 37 + n * 11 + k) % 256 for k in range(1 + (seed + n) % 3)]
                response = session.post(
                    f"{server.url}/v1/models/mnist{route}:predict",
                    json={"instances": [image(v) for v in values]},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
                digits = [p["digit"] for p in response.json()["predictions"]]
                if digits != [expected_digit(v, routes[route]) for v in values]:
                    wrong.append(f"{route} {values}: {digits}")
        return wrong

    with ThreadPoolExecutor(12) as pool:
        assert [w for result in pool.map(client, range(12)) for w in result] == []

    too_many = requests.post(
        f"{server.url}/v1/models/mnist/versions/1:predict",
        json={"instances": [image(0)] * 9},
        timeout=30,
    )
    assert too_many.status_code == 400
    assert too_many.json() == {"error": "Task size 9 is larger than maximum input batch size 8"}


def test_a_lone_large_request_is_split_over_the_free_batch_threads(batchers):
    """Without a timeout, a request that finds nothing queued runs at once on the free
    batch threads, in parts of at least MIN_SPLIT_ROWS rows, its outputs joined in order."""
    servable = RecordingServable()
    batcher = batchers(options(max_batch_size=64, num_batch_threads=2))
    x = np.arange(64)
    assert batcher.run(servable, "", {"x": x})["y"].tolist() == (x * 2).tolist()
    assert sorted(servable.calls) == [32, 32]
    servable.calls.clear()
    assert batcher.run(servable, "", {"x": np.arange(MIN_SPLIT_ROWS + 3)})["y"].shape == (11,)
    assert servable.calls == [MIN_SPLIT_ROWS + 3]  # too small to split


def test_a_failing_part_reruns_the_whole_request_for_its_error(batchers):
    servable = RecordingServable(fail=True)
    batcher = batchers(options(max_batch_size=64, num_batch_threads=2))
    with pytest.raises(ServingError, match="the model broke"):
        batcher.run(servable, "", {"x": np.arange(64)})
    assert sorted(servable.calls) == [32, 32, 64]


def test_a_split_request_keeps_outputs_without_a_batch_dimension_whole(batchers):
    class Summing(RecordingServable):
        def run(self, signature_name, inputs):
            self.calls.append(len(inputs["x"]))
            return {"y": np.array(inputs["x"].sum())}

    servable = Summing()
    batcher = batchers(options(max_batch_size=64, num_batch_threads=2))
    assert int(batcher.run(servable, "", {"x": np.arange(64)})["y"]) == sum(range(64))
    assert sorted(servable.calls) == [32, 32, 64]
