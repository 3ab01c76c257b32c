"""Many clients at once, each on its own keep-alive connection, all answered correctly."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import requests
from serving_testlib import expected_digit, image

from serving import ModelServer

THREADS = 16
REQUESTS_PER_THREAD = 20
ROUTES = {
    "": "flipped",
    "/versions/1": "bucket",
    "/labels/stable": "bucket",
    "/labels/canary": "flipped",
}


def test_concurrent_requests_are_all_answered_correctly(served: ModelServer):
    def client(seed: int) -> list[tuple[int, int]]:
        rng = random.Random(seed)
        mismatches = []
        with requests.Session() as session:
            for _ in range(REQUESTS_PER_THREAD):
                route = rng.choice(list(ROUTES))
                values = [rng.randrange(256) for _ in range(rng.randint(1, 8))]
                response = session.post(
                    f"{served.url}/v1/models/mnist{route}:predict",
                    json={"instances": [image(v) for v in values]},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
                digits = [p["digit"] for p in response.json()["predictions"]]
                expected = [expected_digit(v, ROUTES[route]) for v in values]
                if digits != expected:
                    mismatches.append((digits, expected))
        return mismatches

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(client, range(THREADS)))
    assert [m for result in results for m in result] == []
    assert len(results) == THREADS
