"""Idempotency keys belong to their caller, and a raced key never gets two answers (#23).

Attacks repeated on the live stack: function/serve.py (gunicorn) processes in front of
the model stand-in, on SQLite and on a live Cassandra node. Another client sending the
victim's key and image gets its own record, never the victim's id or feedback token, and
claiming the key first with junk does not block the victim. The same key and image sent
at once by token holders that land in the canary and in stable buckets, through two
processes, all get one answer, and it is the stored record.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import requests

from recognizer import canary
from recognizer.canary import Route
from recognizer.model_client import ModelClient
from recognizer.params import TOKEN_HOLDER
from recognizer.request_log import client_hash
from recognizer.service import Recognizer
from recognizer.sqlite_store import SqliteStore
from tests.support import live_function
from tests.support.live_function import SEVEN, TOKEN, functions, post, stored

two_labels = live_function.two_labels
store_env = live_function.store_env


def test_another_clients_key_gives_nothing_of_the_victims(two_labels, tmp_path, store_env):
    with functions(two_labels.url, tmp_path, store_env, 1) as (url,):
        # The attacker claims the key first, with junk: the victim is not blocked.
        junk = post(url, "attacker", "order-1", image=SEVEN + b"junk")
        victim = post(url, "victim-7f3a", "order-1")
        assert (junk.status_code, victim.status_code) == (200, 200), victim.text
        # The same key and image from another client: a record of its own.
        copy = post(url, "attacker", "order-1", image=SEVEN)
        assert copy.status_code == 422  # its own key stands for its junk upload
        other = post(url, "attacker-2", "order-1")
        assert other.status_code == 200
    (mine,) = victim.json()["predictions"]
    (theirs,) = other.json()["predictions"]
    assert theirs["id"] != mine["id"]
    assert theirs["feedback_token"] != mine["feedback_token"]


def clients_in(bucket_of: Callable[[str], bool], count: int) -> list[str]:
    names = (f"client-{n}" for n in range(10_000))
    return [name for name in names if bucket_of(canary.client_key(name, None))][:count]


def test_a_raced_key_gets_one_answer_and_it_is_the_stored_record(two_labels, tmp_path, store_env):
    """Token holders share the key's scope; half land in the canary (version 2), half in
    stable (version 1), through two processes at once. Before, both answered 200 with the
    same id and different versions; one of them was not what the store kept."""
    in_canary = clients_in(lambda key: canary.bucket(key) < 50, 8)
    in_stable = clients_in(lambda key: canary.bucket(key) >= 50, 8)
    with functions(two_labels.url, tmp_path, store_env, 2) as urls:
        for attempt in range(3):
            mixed = [c for pair in zip(in_canary, in_stable, strict=True) for c in pair]
            send = partial(post, key=f"race-{attempt}", token=True)
            jobs = [(urls[n % 2], client) for n, client in enumerate(mixed)]
            with ThreadPoolExecutor(len(jobs)) as pool:
                responses = list(pool.map(lambda job, send=send: send(*job), jobs))
            assert [r.status_code for r in responses] == [200] * len(jobs), [
                r.text for r in responses
            ]
            answers = [r.json()["predictions"][0] for r in responses]
            record = stored(urls[0], answers[0]["id"])
            for answer in answers:
                assert answer["id"] == record["id"]
                assert answer["model"] == record["model"]
                assert answer["probabilities"] == record["probabilities"]
                assert answer["digit"] == record["digit"]
    assert len(two_labels.predicted) >= 3


def test_the_scope_is_in_the_stored_digest(tmp_path, model_stand_in):
    """Unit level: the same key from two callers is two claims in the store."""
    log = SqliteStore(tmp_path / "p.sqlite3")
    model = ModelClient(model_stand_in.url, "mnist", 30, 5)
    recognizer = Recognizer(model, log, "mnist", 40_000_000, 40_000_000, 256 * 1024)
    one = recognizer.recognize([SEVEN], Route("stable"), "k", caller="id:one")
    two = recognizer.recognize([SEVEN], Route("stable"), "k", caller="id:two")
    again = recognizer.recognize([SEVEN], Route("stable"), "k", caller="id:one")
    assert one.records[0].id != two.records[0].id
    assert again.replayed and again.records == one.records
    log.close()


def test_each_record_keeps_its_caller_and_whether_it_pinned(two_labels, tmp_path):
    """The evidence the canary analysis and training weigh per client (#23)."""
    sqlite = tmp_path / "shared.sqlite3"
    with functions(two_labels.url, tmp_path, {"SQLITE_PATH": str(sqlite)}, 1) as (url,):
        anonymous = post(url, "someone", "k1").json()["predictions"][0]
        pinned = requests.post(
            f"{url}/predict?label=canary",
            data=SEVEN,
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        ).json()["predictions"][0]
        corrected = requests.put(
            f"{url}/predictions/{anonymous['id']}/feedback",
            json={"digit": 3, "token": anonymous["feedback_token"]},
            headers={"X-Client-Id": "corrector"},
            timeout=30,
        )
        assert corrected.status_code == 200
    log = SqliteStore(sqlite)
    first, second = (log.get(uuid.UUID(p["id"])) for p in (anonymous, pinned))
    # A hash of the client key, as the request log shows it: no client id in the store.
    assert (first.client_key, first.pinned) == (f"client:{client_hash('id:someone')}", False)
    assert (second.client_key, second.pinned) == (TOKEN_HOLDER, True)
    assert first.feedback.client_key == f"client:{client_hash('id:corrector')}"
    log.close()
