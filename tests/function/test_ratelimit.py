"""Anonymous clients may not steer the canary (#23): pins need the token, corrections are
rate-limited per client and per record. Attacks repeated on the live stack (gunicorn in
front of the model stand-in), on SQLite and on a live Cassandra node; the window itself
is checked with a clock of the test's own."""

from __future__ import annotations

import pytest
import requests

from recognizer.ratelimit import CorrectionLimits, RateLimited, SlidingWindow
from tests.support import live_function
from tests.support.live_function import SEVEN, TOKEN, functions

two_labels = live_function.two_labels
store_env = live_function.store_env


def test_a_window_admits_its_limit_then_says_how_long_to_wait():
    window = SlidingWindow(2, 60)
    for now in (0.0, 10.0):
        assert window.wait_seconds("a", now) == 0
        window.record("a", now)
    assert window.wait_seconds("a", 20.0) == 40.0
    assert window.wait_seconds("b", 20.0) == 0  # per key
    assert window.wait_seconds("a", 60.5) == 0  # the first one left the window
    assert SlidingWindow(0, 60).wait_seconds("a") == 0  # 0: no limit


def test_a_refused_correction_is_not_counted():
    limits = CorrectionLimits(per_client=3, per_record=1)
    limits.admit("client", "r1")
    with pytest.raises(RateLimited):
        limits.admit("client", "r1")
    limits.admit("client", "r2")  # the refusal above did not use up the client's share
    limits.admit("client", "r3")


def predict(url: str, query: str = "", token: bool = False, client: str = "c") -> requests.Response:
    headers = {"Content-Type": "image/png", "X-Client-Id": client}
    if token:
        headers["Authorization"] = f"Bearer {TOKEN}"
    return requests.post(f"{url}/predict{query}", data=SEVEN, headers=headers, timeout=60)


def correct(url: str, prediction: dict, digit: int, client: str) -> requests.Response:
    return requests.put(
        f"{url}/predictions/{prediction['id']}/feedback",
        json={"digit": digit, "token": prediction["feedback_token"]},
        headers={"X-Client-Id": client},
        timeout=30,
    )


def test_only_the_token_may_pin_a_version_or_a_label(two_labels, tmp_path, store_env):
    with functions(two_labels.url, tmp_path, store_env, 1) as (url,):
        for query in ("?label=canary", "?label=stable", "?version=1"):
            refused = predict(url, query)
            assert refused.status_code == 401, refused.text
            assert "pinning" in refused.json()["error"]["message"]
            assert predict(url, query, token=True).status_code == 200
        assert predict(url).status_code == 200  # unpinned stays open
        history = requests.get(
            f"{url}/predictions", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ).json()["predictions"]
    assert len(history) == 4  # the refused pins recorded nothing


def test_a_correction_flood_is_cut_per_record_and_per_client(two_labels, tmp_path, store_env):
    env = {
        **store_env,
        "CORRECTIONS_PER_RECORD_PER_HOUR": "2",
        "CORRECTIONS_PER_CLIENT_PER_HOUR": "5",
    }
    with functions(two_labels.url, tmp_path, env, 1) as (url,):
        one = predict(url, client="flooder").json()["predictions"][0]
        statuses = [correct(url, one, 3, "flooder").status_code for _ in range(20)]
        assert statuses == [200, 200] + [429] * 18
        limited = correct(url, one, 3, "flooder")
        assert int(limited.headers["Retry-After"]) > 0
        assert limited.json()["error"]["code"] == "too_many_corrections"
        others = [predict(url, client="flooder").json()["predictions"][0] for _ in range(4)]
        statuses = [correct(url, p, 3, "flooder").status_code for p in others]
        assert statuses == [200, 200, 200, 429]  # 5 in the hour from this client
        assert correct(url, others[3], 3, "someone-else").status_code == 200
        bulk = requests.put(
            f"{url}/predictions/{one['id']}/feedback",
            json={"digit": 4},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert bulk.status_code == 200  # the API token is not limited
