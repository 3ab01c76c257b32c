"""Read the hostile-input corpus (manifest.json, written by make_corpus.py) into requests.

Each entry becomes the exact bytes of one HTTP request (method, URL, headers, body), so
the Flask test client and a real HTTP client send the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from urllib3 import encode_multipart_formdata

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
BOUNDARY = "hostile-corpus-boundary"


@dataclass(frozen=True)
class Entry:
    name: str
    method: str
    url: str  # path and query string, as sent
    headers: dict[str, str]
    body: bytes
    status: int
    code: str | None  # the error code, for an error
    digit: int | None  # the recognised digit, for a 200
    why: str

    @property
    def rejected(self) -> bool:
        return self.status != 200


def entries() -> list[Entry]:
    """Every corpus entry, in manifest order."""
    return [_entry(raw) for raw in json.loads(MANIFEST.read_text())["entries"]]


def referenced_files() -> set[str]:
    """The corpus files the manifest names."""
    names: set[str] = set()
    for raw in json.loads(MANIFEST.read_text())["entries"]:
        request = raw["request"]
        names.update(request.get("files", []))
        names.update(request[key] for key in ("file", "query_file") if key in request)
    return names


def _entry(raw: dict) -> Entry:
    request, expect = raw["request"], raw["expect"]
    query = request.get("query", "")
    if "query_file" in request:
        query = (HERE / request["query_file"]).read_text()
    headers: dict[str, str] = {}
    body = b""
    if request["body"] == "raw":
        body = (HERE / request["file"]).read_bytes()
        if request["content_type"] is not None:
            headers["Content-Type"] = request["content_type"]
    elif request["body"] == "multipart":
        fields = [
            (request["field"], (name, (HERE / name).read_bytes(), "application/octet-stream"))
            for name in request["files"]
            for _ in range(request["copies"])
        ]
        body, headers["Content-Type"] = encode_multipart_formdata(fields, boundary=BOUNDARY)
    return Entry(
        name=raw["name"],
        method=request["method"],
        url=request["path"] + (f"?{query}" if query else ""),
        headers=headers,
        body=body,
        status=expect["status"],
        code=expect.get("code"),
        digit=expect.get("digit"),
        why=raw["why"],
    )
