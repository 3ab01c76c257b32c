"""Versions appearing and vanishing, config reloads and TF Serving's label rules, while running."""

from __future__ import annotations

import logging
import shutil

import pytest
import requests
from serving_testlib import (
    Deployment,
    expected_digit,
    model_config,
    predict_digit,
    version_states,
    wait_for,
    write_atomically,
)

from serving import ConfigError, ModelServer

WHITE = 255  # bucket answers 9, flipped answers 0


def status_of(url: str, version: int) -> dict:
    response = requests.get(f"{url}/v1/models/mnist/versions/{version}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model_version_status"][0]


def test_new_version_directory_is_served_without_restart(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="latest { num_versions: 2 }")
    server = start_server(deployment)
    assert version_states(server.url) == {1: "AVAILABLE"}
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "bucket")

    deployment.add_version(2, "flipped")  # written under .tmp-2, then renamed into place

    wait_for(lambda: version_states(server.url) == {1: "AVAILABLE", 2: "AVAILABLE"}, what="v2")
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "flipped")  # latest
    assert predict_digit(server.url, WHITE, "/versions/1") == expected_digit(WHITE, "bucket")


def test_unfinished_and_foreign_directories_are_ignored(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="all {}")
    server = start_server(deployment)
    store = deployment.store["flipped"]
    shutil.copytree(store, deployment.model_dir / ".tmp-3")  # export in progress
    shutil.copytree(store, deployment.model_dir / "4.partial")  # not a number
    half = deployment.model_dir / "5"  # numbered, but saved_model.pb not written yet
    shutil.copytree(store / "variables", half / "variables")
    (deployment.model_dir / "6").write_text("a file, not a directory")

    server.repository.poll_filesystem()  # a scan happens now, not on the next tick
    assert version_states(server.url) == {1: "AVAILABLE"}
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "bucket")

    shutil.copy2(store / "saved_model.pb", half / "saved_model.pb")  # the export completes
    wait_for(lambda: version_states(server.url).get(5) == "AVAILABLE", what="v5")
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "flipped")


def test_latest_policy_swaps_versions_without_a_gap(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="latest {}")  # TF Serving's default: the newest one
    server = start_server(deployment)
    deployment.add_version(2, "flipped")

    wait_for(lambda: version_states(server.url) == {2: "AVAILABLE", 1: "END"}, what="v1 unload")
    assert status_of(server.url, 1) == {
        "version": "1",
        "state": "END",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "flipped")
    response = requests.post(
        f"{server.url}/v1/models/mnist/versions/1:predict", json={"instances": [[[0] * 28] * 28]}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Specific(mnist, 1)"}


def test_deleted_version_is_unloaded(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config()
    server = start_server(deployment)
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "flipped")

    shutil.rmtree(deployment.model_dir / "2")

    wait_for(lambda: version_states(server.url) == {2: "END", 1: "AVAILABLE"}, what="v2 unload")
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "bucket")


def test_failed_loads_end_with_their_error(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "bad_warmup")  # its warmup request fails in the graph
    deployment.add_version(3, "corrupt")
    deployment.write_config(policy="all {}")
    server = start_server(deployment)

    assert version_states(server.url) == {3: "END", 2: "END", 1: "AVAILABLE"}
    warmup_failure = status_of(server.url, 2)
    assert warmup_failure["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "reduction" in warmup_failure["status"]["error_message"]
    corrupt = status_of(server.url, 3)
    assert corrupt["state"] == "END"
    assert corrupt["status"]["error_code"] != "OK"
    assert corrupt["status"]["error_message"]
    # Latest means latest AVAILABLE.
    assert predict_digit(server.url, WHITE) == expected_digit(WHITE, "bucket")
    response = requests.post(
        f"{server.url}/v1/models/mnist/versions/2:predict", json={"instances": [[[0] * 28] * 28]}
    )
    assert response.status_code == 404


def test_changed_config_file_is_picked_up(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 1 }", labels={"stable": 1})
    server = start_server(deployment, allow_version_labels_for_unavailable_models=True)
    assert version_states(server.url) == {1: "AVAILABLE"}

    deployment.write_config(policy="specific { versions: 1 versions: 2 }", labels={"stable": 1})
    wait_for(lambda: version_states(server.url).get(2) == "AVAILABLE", what="v2 via config")

    deployment.write_config(
        policy="specific { versions: 1 versions: 2 }", labels={"stable": 2, "canary": 1}
    )
    wait_for(lambda: server.repository.labels == {"mnist": {"stable": 2, "canary": 1}})
    assert predict_digit(server.url, WHITE, "/labels/stable") == expected_digit(WHITE, "flipped")
    assert predict_digit(server.url, WHITE, "/labels/canary") == expected_digit(WHITE, "bucket")

    deployment.write_config(policy="specific { versions: 2 }", labels={"stable": 2})
    wait_for(lambda: version_states(server.url) == {2: "AVAILABLE", 1: "END"}, what="v1 unload")


def test_unreadable_config_keeps_the_previous_one(
    deployment: Deployment, start_server, caplog: pytest.LogCaptureFixture
):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config()
    server = start_server(deployment)
    caplog.set_level(logging.ERROR, logger="serving")

    write_atomically(deployment.config_file, "model_config_list { config { name: ")
    wait_for(lambda: "Rejected model config" in caplog.text, what="the rejection")
    assert version_states(server.url) == {2: "AVAILABLE", 1: "AVAILABLE"}

    deployment.write_config(policy="specific { versions: 2 }")  # fixed again: applied
    wait_for(lambda: version_states(server.url) == {2: "AVAILABLE", 1: "END"}, what="recovery")


# --------------------------------------------------------------- label rules
def test_labels_without_the_flag_fail_start_up_like_tf_serving(deployment: Deployment):
    deployment.add_version(1, "bucket")
    deployment.write_config(labels={"stable": 1})
    server = ModelServer(**deployment.server_options())
    try:
        with pytest.raises(ConfigError) as raised:
            server.start()
    finally:
        server.stop()
    assert raised.value.code == "FAILED_PRECONDITION"
    assert raised.value.message == (
        "Request to assign label to version 1 of model mnist, "
        "which is not currently available for inference"
    )


def test_label_may_only_move_to_an_available_version(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.add_version(3, "flipped")
    deployment.write_config(policy="specific { versions: 1 versions: 2 }")
    server = start_server(deployment, model_config_file_poll_wait_seconds=0)

    # Labels on AVAILABLE versions are fine without the flag.
    server.reload_config(model_config(labels={"stable": 1, "canary": 2}))
    assert server.repository.labels == {"mnist": {"stable": 1, "canary": 2}}

    # Loading 3 and moving stable to it in one push is rejected -- whole: 3 is not loaded.
    one_push = model_config(
        policy="specific { versions: 1 versions: 2 versions: 3 }", labels={"stable": 3}
    )
    with pytest.raises(ConfigError, match="assign label to version 3 of model mnist"):
        server.reload_config(one_push)
    assert server.repository.labels == {"mnist": {"stable": 1, "canary": 2}}
    server.repository.poll_filesystem()
    assert 3 not in version_states(server.url)
    assert predict_digit(server.url, WHITE, "/labels/stable") == expected_digit(WHITE, "bucket")

    # Two pushes work: load 3, wait for AVAILABLE, then move the label.
    two_versions = "specific { versions: 1 versions: 2 versions: 3 }"
    server.reload_config(model_config(policy=two_versions, labels={"stable": 1, "canary": 2}))
    wait_for(lambda: version_states(server.url).get(3) == "AVAILABLE", what="v3")
    server.reload_config(model_config(policy=two_versions, labels={"stable": 3, "canary": 2}))
    assert predict_digit(server.url, WHITE, "/labels/stable") == expected_digit(WHITE, "flipped")
    assert status_of(server.url, 3)["state"] == "AVAILABLE"


def test_flag_allows_new_labels_on_unavailable_versions_only(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(labels={"stable": 1})
    server = start_server(
        deployment,
        allow_version_labels_for_unavailable_models=True,
        model_config_file_poll_wait_seconds=0,
    )
    # A new label may point at a version that is not loaded (or does not exist yet) ...
    server.reload_config(model_config(labels={"stable": 1, "next": 7}))
    assert server.repository.labels == {"mnist": {"stable": 1, "next": 7}}
    response = requests.post(
        f"{server.url}/v1/models/mnist/labels/next:predict", json={"instances": [[[0] * 28] * 28]}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Specific(mnist, 7)"}
    # ... but a label in use may still only move to an AVAILABLE version.
    with pytest.raises(ConfigError, match="assign label to version 8 of model mnist"):
        server.reload_config(model_config(labels={"stable": 8, "next": 7}))
    server.reload_config(model_config(labels={"stable": 2, "next": 7}))
    assert predict_digit(server.url, WHITE, "/labels/stable") == expected_digit(WHITE, "flipped")


def test_polled_config_breaking_the_label_rule_is_rejected_whole(
    deployment: Deployment, start_server, caplog: pytest.LogCaptureFixture
):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 1 }", labels={"stable": 1})
    server = start_server(deployment, allow_version_labels_for_unavailable_models=True)
    caplog.set_level(logging.ERROR, logger="serving")

    deployment.write_config(policy="specific { versions: 1 versions: 2 }", labels={"stable": 2})

    wait_for(lambda: "Request to assign label to version 2" in caplog.text, what="the rejection")
    assert server.repository.labels == {"mnist": {"stable": 1}}
    server.repository.poll_filesystem()
    assert version_states(server.url) == {1: "AVAILABLE"}  # the policy change was not applied
    assert predict_digit(server.url, WHITE, "/labels/stable") == expected_digit(WHITE, "bucket")


def test_reload_config_reads_the_file(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, model_config_file_poll_wait_seconds=0)
    deployment.write_config(policy="specific { versions: 2 }")
    server.reload_config()
    server.repository.wait_until_settled(timeout=20)
    assert version_states(server.url) == {2: "AVAILABLE", 1: "END"}


def test_warmup_requests_are_replayed_on_load(
    deployment: Deployment, start_server, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="serving")
    deployment.add_version(1, "bucket")  # ships assets.extra/tf_serving_warmup_requests
    deployment.write_config(policy="latest {}")
    server = start_server(deployment)
    assert version_states(server.url) == {1: "AVAILABLE"}
    assert "Number of warmup records read: 1." in caplog.text
