"""Over HTTP, on SQLite and a live Cassandra node: the history a page at a time
(`?before=<next>`), and DELETE /predictions/<id>, the answer to an erasure request."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from tests.function.test_feedback import API_TOKEN, BEARER, SECRET, app_on


@pytest.fixture(params=["sqlite", "cassandra"])
def client(request, monkeypatch):
    with app_on(
        request.param, request, monkeypatch, FEEDBACK_SECRET=SECRET, API_TOKEN=API_TOKEN
    ) as app:
        yield app.test_client()


def predict(client, mnist, n: int) -> list[dict]:
    buffer = io.BytesIO()
    Image.fromarray(mnist.x_test[0]).save(buffer, format="PNG")
    files = {"image": [(io.BytesIO(buffer.getvalue()), f"{i}.png") for i in range(n)]}
    response = client.post("/predict", data=files, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["predictions"]


def test_the_history_pages_back_whole_with_next(client, mnist) -> None:
    made = [p["id"] for p in predict(client, mnist, 7)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=3" + ("" if cursor is None else f"&before={cursor}")
        page = client.get(f"/predictions?{query}", headers=BEARER).get_json()
        seen += [p["id"] for p in page["predictions"]]
        cursor, pages = page["next"], pages + 1
        if cursor is None:
            break
    assert seen == made[::-1] and pages == 3  # newest first (a batch: last image first)


@pytest.mark.parametrize("cursor", ["x", "A" * 23, str(uuid.uuid4()), "AAAAAAAAAAAAAAAAAAAAAA"])
def test_a_cursor_that_no_page_gave_is_400(client, cursor) -> None:
    response = client.get(f"/predictions?before={cursor}", headers=BEARER)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_parameter"


def test_an_erased_prediction_is_gone_from_every_read(client, mnist) -> None:
    erased, kept = predict(client, mnist, 2)
    token = erased["feedback_token"]
    answer = client.put(f"/predictions/{erased['id']}/feedback", json={"digit": 3, "token": token})
    assert answer.status_code == 200
    no_token = client.delete(f"/predictions/{erased['id']}")
    assert no_token.status_code == 401
    other_token = {"Authorization": f"Bearer {kept['feedback_token']}"}
    assert client.delete(f"/predictions/{erased['id']}", headers=other_token).status_code == 401
    done = client.delete(
        f"/predictions/{erased['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert done.status_code == 200 and done.get_json() == {"id": erased["id"], "erased": True}
    for path in (f"/predictions/{erased['id']}", f"/predictions/{erased['id']}/image"):
        assert client.get(path, headers=BEARER).status_code == 404
    history = client.get("/predictions?limit=10", headers=BEARER).get_json()["predictions"]
    assert [p["id"] for p in history] == [kept["id"]]
    again = client.delete(f"/predictions/{erased['id']}", headers=BEARER)  # the API token
    assert again.status_code == 404
    assert client.delete(f"/predictions/{kept['id']}", headers=BEARER).status_code == 200
    assert client.get("/predictions", headers=BEARER).get_json() == {
        "predictions": [],
        "next": None,
    }
