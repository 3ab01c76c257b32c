"""A person's own predictions (#23): a prediction's feedback token, as the Bearer token,
reads that record and its image without the API token, and nothing else; the key behind
the tokens rotates without invalidating every token at once (FEEDBACK_SECRET_PREVIOUS).
On the live stack (gunicorn, the model stand-in), on SQLite and on a live Cassandra node.
"""

from __future__ import annotations

from pathlib import Path

import requests

from tests.support import live_function
from tests.support.function_server import running_function
from tests.support.live_function import SEVEN, TOKEN, functions

two_labels = live_function.two_labels
store_env = live_function.store_env
OLD_KEY, NEW_KEY = "o" * 64, "n" * 64


def get(url: str, path: str, token: str | None) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.get(f"{url}{path}", headers=headers, timeout=30)


def upload(url: str) -> dict:
    response = requests.post(
        f"{url}/predict", data=SEVEN, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_a_feedback_token_reads_its_own_record_and_image_only(two_labels, tmp_path, store_env):
    with functions(two_labels.url, tmp_path, store_env, 1) as (url,):
        mine, theirs = upload(url), upload(url)
        own = mine["feedback_token"]
        record = get(url, f"/predictions/{mine['id']}", own)
        assert record.status_code == 200 and record.json()["id"] == mine["id"]
        image = get(url, f"/predictions/{mine['id']}/image", own)
        assert image.status_code == 200 and image.content == SEVEN
        assert get(url, f"/predictions/{mine['id']}", None).status_code == 401
        assert get(url, f"/predictions/{theirs['id']}", own).status_code == 401
        assert get(url, f"/predictions/{theirs['id']}/image", own).status_code == 401
        assert get(url, "/predictions", own).status_code == 401  # not the history
        assert get(url, f"/predictions/{theirs['id']}", TOKEN).status_code == 200


def test_a_rotated_key_keeps_earlier_tokens_until_it_is_dropped(two_labels, tmp_path: Path):
    sqlite = tmp_path / "rotation.sqlite3"
    base = {"API_TOKEN": TOKEN, "WORKERS": "1", "THREADS": "2"}

    def start(**keys: str):
        return running_function(two_labels.url, sqlite, **base, **keys)

    with start(FEEDBACK_SECRET=OLD_KEY) as url:
        before = upload(url)
    with start(FEEDBACK_SECRET=NEW_KEY, FEEDBACK_SECRET_PREVIOUS=OLD_KEY) as url:
        after = upload(url)
        assert after["feedback_token"] != before["feedback_token"]
        for prediction in (before, after):
            token = prediction["feedback_token"]
            assert get(url, f"/predictions/{prediction['id']}", token).status_code == 200
            corrected = requests.put(
                f"{url}/predictions/{prediction['id']}/feedback",
                json={"digit": 7, "token": token},
                timeout=30,
            )
            assert corrected.status_code == 200, corrected.text
    with start(FEEDBACK_SECRET=NEW_KEY, FEEDBACK_SECRET_PREVIOUS=OLD_KEY) as url:
        erased = requests.delete(
            f"{url}/predictions/{before['id']}",
            headers={"Authorization": f"Bearer {before['feedback_token']}"},
            timeout=30,
        )
        assert erased.status_code == 200, erased.text  # erasure takes a rotated-out key too
    with start(FEEDBACK_SECRET=NEW_KEY) as url:
        assert get(url, f"/predictions/{before['id']}", before["feedback_token"]).status_code == 401
        assert get(url, f"/predictions/{after['id']}", after["feedback_token"]).status_code == 200
        assert get(url, f"/predictions/{before['id']}", TOKEN).status_code == 404  # erased
