"""`python -m infra.deploy run-serving` with SERVING_MODELS_BUCKET: one config for every
Cloud Run instance, in a bucket the rollout tool writes (dry runs; no cloud here)."""

from __future__ import annotations

import pytest

from infra.deploy.__main__ import main, plan
from infra.rollout.shared import Bucket, shared_config
from recognizer.env import SettingsError
from tests.infra.support import ROOT

ENVIRON = {
    "GCP_PROJECT": "digits-prod-42",
    "GCP_REGION": "europe-west1",
    "IMAGE_TAG": "v2",
    "SERVING_MODELS_BUCKET": "digits-prod-42-models",
}
CONFIG = "gs://digits-prod-42-models/config/models.config"


def test_without_a_bucket_the_plan_is_the_baked_in_one() -> None:
    environ = {k: v for k, v in ENVIRON.items() if k != "SERVING_MODELS_BUCKET"}
    (deploy,) = plan("run-serving", environ)
    assert not [a for a in deploy.argv if "volume" in a or "MODEL_CONFIG" in a]


def test_the_bucket_is_made_seeded_once_and_mounted_and_its_config_polled() -> None:
    create, sync, seed, deploy = plan("run-serving", ENVIRON)
    assert create.argv[:5] == [
        "gcloud",
        "storage",
        "buckets",
        "create",
        "gs://digits-prod-42-models",
    ]
    assert create.unless is not None and create.unless[3] == "describe"
    assert sync.argv == ["gcloud", "storage", "rsync", "models", "gs://digits-prod-42-models",
                         "--recursive"]  # fmt: skip
    assert not [a for a in sync.argv if a.startswith("--delete")]  # served versions stay
    assert (ROOT / "models" / "mnist").is_dir()
    # The config only when the bucket has none: a redeploy never undoes a rollout.
    assert seed.argv == ["gcloud", "storage", "cp", "serving/models.config", CONFIG]
    assert seed.unless == ["gcloud", "storage", "objects", "describe", CONFIG,
                           "--format=value(name)"]  # fmt: skip
    assert (ROOT / "serving" / "models.config").is_file()
    assert deploy.argv[:4] == ["gcloud", "run", "deploy", "tf-serving"]
    assert "--execution-environment=gen2" in deploy.argv
    assert (
        "--add-volume=name=models,type=cloud-storage,bucket=digits-prod-42-models,readonly=true"
        in deploy.argv
    )
    assert "--add-volume-mount=volume=models,mount-path=/models" in deploy.argv
    (env,) = [a for a in deploy.argv if a.startswith("--set-env-vars=")]
    assert env == f"--set-env-vars=MODEL_CONFIG_FILE={CONFIG},MODEL_CONFIG_POLL_SECONDS=30"
    # The object the model server polls is the one the rollout tool takes for --config.
    assert shared_config(CONFIG) == Bucket(CONFIG)


def test_the_model_servers_identity_may_read_the_bucket() -> None:
    account = "tf-serving@digits-prod-42.iam.gserviceaccount.com"
    steps = plan("run-serving", {**ENVIRON, "SERVICE_ACCOUNT": account})
    (grant,) = [s for s in steps if "add-iam-policy-binding" in s.argv]
    assert grant.argv[-2:] == [f"--member=serviceAccount:{account}",
                               "--role=roles/storage.objectViewer"]  # fmt: skip
    assert steps.index(grant) < len(steps) - 1  # before the deploy that mounts it


@pytest.mark.parametrize(
    ("name", "value"),
    [("SERVING_MODELS_BUCKET", "Digits_Models!"), ("SERVING_CONFIG_POLL_SECONDS", "0")],
)
def test_a_malformed_bucket_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        plan("run-serving", {**ENVIRON, name: value})


def test_the_dry_run_prints_the_conditional_steps_as_shell(capsys) -> None:
    assert main(["run-serving", "--dry-run"], environ=ENVIRON) == 0
    out = capsys.readouterr().out
    seed = f"gcloud storage objects describe {CONFIG} '--format=value(name)' >/dev/null 2>&1"
    assert f"{seed} || gcloud storage cp serving/models.config {CONFIG}" in out
