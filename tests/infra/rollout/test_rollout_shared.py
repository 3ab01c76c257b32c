"""The shared config's three homes: a file, a ConfigMap (kubectl) and a bucket (gcloud).

kubectl and gcloud cannot reach a cluster or Cloud Storage from here, so they are stood
in for by functions that keep the object and its version the way the API server and
Cloud Storage do: a write over a stale version is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.rollout.errors import RolloutError
from infra.rollout.shared import Bucket, ConfigMap, LocalFile, run_command, shared_config


class ApiServer:
    """`kubectl get configmap` and `kubectl replace -f -` with resourceVersion checks."""

    def __init__(self, text: str) -> None:
        self.object = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "tf-serving-config", "namespace": "ns", "resourceVersion": "7"},
            "data": {"models.config": text},
        }
        self.calls: list[list[str]] = []

    def __call__(self, argv, stdin):
        self.calls.append(list(argv))
        if argv[:3] == ["kubectl", "get", "configmap"]:
            return json.dumps(self.object)
        assert argv[:2] == ["kubectl", "replace"] and "-f" in argv
        sent = json.loads(stdin)
        if sent["metadata"]["resourceVersion"] != self.object["metadata"]["resourceVersion"]:
            raise RolloutError("`kubectl replace` failed: the object has been modified")
        version = str(int(sent["metadata"]["resourceVersion"]) + 1)
        self.object = {**sent, "metadata": {**sent["metadata"], "resourceVersion": version}}
        return json.dumps(self.object)


class Storage:
    """`gcloud storage objects describe|cat|cp` with generations and --if-generation-match."""

    def __init__(self, text: str) -> None:
        self.text, self.generation = text, 1
        self.calls: list[list[str]] = []

    def __call__(self, argv, stdin):
        self.calls.append(list(argv))
        if argv[2:4] == ["objects", "describe"]:
            return json.dumps({"generation": str(self.generation)})
        if argv[2] == "cat":
            assert argv[3].endswith(f"#{self.generation}")
            return self.text
        assert argv[2] == "cp"
        match = next(a for a in argv if a.startswith("--if-generation-match="))
        if match.split("=")[1] != str(self.generation):
            raise RolloutError("`gcloud storage cp` failed: 412 Precondition Failed")
        self.text, self.generation = Path(argv[3]).read_text(), self.generation + 1
        return ""


def test_where_the_config_is_is_told_by_its_spelling(tmp_path):
    assert shared_config(str(tmp_path / "models.config")) == LocalFile(tmp_path / "models.config")
    assert shared_config("configmap:digits/tf-serving-config") == ConfigMap(
        "digits", "tf-serving-config", "models.config"
    )
    assert shared_config("gs://bucket/config/models.config") == Bucket(
        "gs://bucket/config/models.config"
    )
    for wrong in ("configmap:digits", "gs://bucket", "gs://bucket/dir/"):
        with pytest.raises(RolloutError, match="is not"):
            shared_config(wrong)


def test_a_file_is_written_whole_and_only_over_what_was_read(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    shared = LocalFile(path)
    assert shared.read() == "old"
    shared.write("new")
    assert path.read_text() == "new" and not list(tmp_path.glob(".models.config.*"))
    path.write_text("someone else's")
    with pytest.raises(RolloutError, match="changed since it was read"):
        shared.write("mine")
    assert path.read_text() == "someone else's"


def test_a_configmap_is_replaced_over_the_resource_version_read():
    api = ApiServer("old")
    shared = ConfigMap("ns", "tf-serving-config", run=api)
    assert shared.read() == "old"
    shared.write("new")
    assert api.object["data"]["models.config"] == "new"
    assert api.object["metadata"]["resourceVersion"] == "8"
    assert api.calls[-1] == ["kubectl", "replace", "-n", "ns", "-o", "json", "-f", "-"]
    shared.write("newer")  # its own write's version is the one it holds now
    assert api.object["data"]["models.config"] == "newer"

    other = ConfigMap("ns", "tf-serving-config", run=api)
    other.read()
    shared.read()
    other.write("theirs")
    with pytest.raises(RolloutError, match="has been modified"):
        shared.write("mine")
    assert api.object["data"]["models.config"] == "theirs"


def test_a_bucket_object_is_uploaded_only_over_the_generation_read():
    storage = Storage("old")
    shared = Bucket("gs://b/config/models.config", run=storage)
    assert shared.read() == "old"
    shared.write("new")
    assert (storage.text, storage.generation) == ("new", 2)
    other = Bucket("gs://b/config/models.config", run=storage)
    other.read()
    other.write("theirs")
    with pytest.raises(RolloutError, match="412"):
        shared.write("mine")
    assert storage.text == "theirs"


def test_a_missing_or_failing_cli_is_a_rollout_error_not_a_traceback():
    with pytest.raises(RolloutError, match="no-such-kubectl is not installed or not on PATH"):
        run_command(["no-such-kubectl", "get", "configmap"])
    with pytest.raises(RolloutError, match=r"failed: .*No such file"):
        run_command(["ls", "/no/such/path"])
