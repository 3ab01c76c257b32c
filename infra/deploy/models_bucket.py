"""The Cloud Storage bucket every Cloud Run instance of TF Serving reads: models and config.

Cloud Run instances share no disk, and the image's baked config would give each its own
copy, so with SERVING_MODELS_BUCKET set the bucket is the one place: it is mounted at
/models (Cloud Storage FUSE, read-only), so the config's `/models/mnist` base path finds
the versions there, and TF Serving polls `gs://BUCKET/config/models.config` itself every
SERVING_CONFIG_POLL_SECONDS. `python -m infra.rollout --config gs://BUCKET/config/models.config`
rewrites that object (an upload is atomic), so a label moves with no rebuild and no deploy.

The config is uploaded only when the bucket has none: a redeploy never undoes a rollout.
Model versions are synced up (never deleted) on every deploy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from infra.deploy.commands import Step
from infra.deploy.settings import ServingSettings
from recognizer.env import Reader

MODELS_DIR = "models"
SHIPPED_CONFIG = "serving/models.config"
MOUNT = "/models"
# Cloud Storage's rule for a bucket name without dots.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class ModelsBucket:
    name: str
    poll_seconds: int

    @property
    def config_url(self) -> str:
        return f"gs://{self.name}/config/models.config"


def load_models_bucket(environ: Mapping[str, str]) -> ModelsBucket | None:
    """SERVING_MODELS_BUCKET (unset: models and config baked in, as before) and
    SERVING_CONFIG_POLL_SECONDS; SettingsError names a malformed one."""
    read = Reader(environ)
    name = read.text("SERVING_MODELS_BUCKET", "", _BUCKET, "a bucket name like my-digit-models")
    poll = read.whole("SERVING_CONFIG_POLL_SECONDS", 30, 1, 3600)
    read.check()
    return ModelsBucket(name, poll) if name else None


def setup(bucket: ModelsBucket, settings: ServingSettings) -> list[Step]:
    """Create the bucket unless it exists, sync the models up, seed the config once, and
    let the model server's identity read it."""
    platform = settings.platform
    url = f"gs://{bucket.name}"
    steps = [
        Step(
            [
                "gcloud",
                "storage",
                "buckets",
                "create",
                url,
                f"--project={platform.project}",
                f"--location={platform.region}",
                "--uniform-bucket-level-access",
            ],
            unless=[
                "gcloud",
                "storage",
                "buckets",
                "describe",
                url,
                f"--project={platform.project}",
                "--format=value(name)",
            ],
        ),
        # --recursive, never --delete-unmatched-destination-objects: a version served now
        # stays even when this checkout no longer has it.
        Step(["gcloud", "storage", "rsync", MODELS_DIR, url, "--recursive"]),
        # Only when there is none: the rollout tool owns it from the first deploy on.
        Step(
            ["gcloud", "storage", "cp", SHIPPED_CONFIG, bucket.config_url],
            unless=[
                "gcloud",
                "storage",
                "objects",
                "describe",
                bucket.config_url,
                "--format=value(name)",
            ],
        ),
    ]
    if platform.service_account:
        steps.append(
            Step(
                [
                    "gcloud",
                    "storage",
                    "buckets",
                    "add-iam-policy-binding",
                    url,
                    f"--member=serviceAccount:{platform.service_account}",
                    "--role=roles/storage.objectViewer",
                ]
            )
        )
    return steps


def deploy_flags(bucket: ModelsBucket) -> list[str]:
    """What `gcloud run deploy` adds: the bucket at /models, the polled config in it."""
    return [
        "--execution-environment=gen2",  # Cloud Storage volumes need the second generation
        f"--add-volume=name=models,type=cloud-storage,bucket={bucket.name},readonly=true",
        f"--add-volume-mount=volume=models,mount-path={MOUNT}",
        f"--set-env-vars=MODEL_CONFIG_FILE={bucket.config_url},"
        f"MODEL_CONFIG_POLL_SECONDS={bucket.poll_seconds}",
    ]
