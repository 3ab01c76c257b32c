"""`python -m infra.deploy TARGET [--build] [--dry-run]`: plan the commands, then run them.

Targets:
  function      Cloud Functions (2nd gen) from the function/ source directory
  run-function  the function container (Dockerfile.function) on Cloud Run
  run-serving   TensorFlow Serving (Dockerfile.serving) on Cloud Run; with
                SERVING_MODELS_BUCKET every instance polls one config in that bucket

Every setting is an environment variable (README, "Deploy"). --dry-run prints the exact
commands and runs nothing; a missing or malformed variable, or a CPU and memory pair
Cloud Run refuses, stops before any command. With --build, an Artifact Registry image's
repository is created first unless it exists (a push to a missing one fails).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from infra.deploy import commands, models_bucket
from infra.deploy.commands import Step
from infra.deploy.settings import has_digest, load_function, load_serving
from recognizer.env import SettingsError

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("function", "run-function", "run-serving")


def _build(dockerfile: str, image: str, variable: str) -> list[Step]:
    if has_digest(image):
        raise SettingsError(
            [
                f"--build with {variable}={image!r}: a digest names an image that exists "
                "already; give a tag to build and push, or deploy the digest without --build"
            ]
        )
    return commands.build_and_push(dockerfile, image)


def plan(target: str, environ: Mapping[str, str], *, build: bool = False) -> list[Step]:
    """The commands deploying `target`, in order; SettingsError names every bad variable."""
    if target == "function":
        if build:
            raise SettingsError(["--build: the function target deploys source, there is no image"])
        return [Step(commands.cloud_functions_deploy(load_function(environ, container=False)))]
    if target == "run-function":
        settings = load_function(environ, container=True)
        assert settings.image is not None
        steps = (
            _build(commands.FUNCTION_DOCKERFILE, settings.image, "FUNCTION_IMAGE") if build else []
        )
        return [*steps, Step(commands.cloud_run_function(settings))]
    if target == "run-serving":
        settings = load_serving(environ)
        steps = (
            _build(commands.SERVING_DOCKERFILE, settings.image, "SERVING_IMAGE") if build else []
        )
        bucket = models_bucket.load_models_bucket(environ)
        if bucket is None:
            deploy = [Step(commands.cloud_run_serving(settings))]
        else:
            deploy = [
                *models_bucket.setup(bucket, settings),
                Step([*commands.cloud_run_serving(settings), *models_bucket.deploy_flags(bucket)]),
            ]
        if settings.invoker is not None:
            deploy.append(Step(commands.cloud_run_invoker(settings)))
        return [*steps, *deploy]
    raise SettingsError([f"unknown target {target!r}: use one of {', '.join(TARGETS)}"])


def warnings(target: str, environ: Mapping[str, str]) -> list[str]:
    """Likely mistakes that are not errors."""
    notes = []
    if target == "run-serving" and not environ.get("SERVING_INVOKER"):
        notes.append(
            "SERVING_INVOKER is unset: the model server lets in only accounts with "
            "roles/run.invoker on it, and none is granted here; grant the function's "
            "service account or set SERVING_INVOKER to it"
        )
    url = environ.get("MODEL_SERVER_URL", "")
    if target != "run-serving" and ".run.app" in url and environ.get("VPC_EGRESS") != "all-traffic":
        notes.append(
            "MODEL_SERVER_URL is a Cloud Run URL: if that service has internal ingress (the "
            "run-serving default), the function reaches it only with VPC_CONNECTOR and "
            "VPC_EGRESS=all-traffic"
        )
    return notes


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    run: Callable[[list[str]], int] | None = None,
) -> int:
    """Exit status: 0 done, 1 a command failed, 2 configuration refused."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m infra.deploy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument(
        "--build",
        action="store_true",
        help="build and push the image first (creating its Artifact Registry repository)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)

    try:
        steps = plan(args.target, environ, build=args.build)
    except SettingsError as exc:
        print(f"infra.deploy {args.target}: refused:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    for note in warnings(args.target, environ):
        print(f"infra.deploy: warning: {note}", file=sys.stderr)

    if args.dry_run:
        print(f"# run from {ROOT}")
        for step in steps:
            print(step.shell())
        return 0

    check = run or (lambda argv: _run(argv, quiet=True))
    run = run or _run
    for step in steps:
        if step.unless is not None:
            print(f"+ {shlex.join(step.unless)}", flush=True)
            if check(step.unless) == 0:
                print(f"  (done already, skipping: {shlex.join(step.argv)})", flush=True)
                continue
        print(f"+ {shlex.join(step.argv)}", flush=True)
        status = run(step.argv)
        if status != 0:
            print(f"infra.deploy: {step.argv[0]} exited with {status}", file=sys.stderr)
            return 1
    return 0


def _run(argv: list[str], *, quiet: bool = False) -> int:
    if shutil.which(argv[0]) is None:
        print(f"infra.deploy: {argv[0]} is not on PATH", file=sys.stderr)
        return 127
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run(argv, cwd=ROOT, check=False, stdout=output, stderr=output).returncode


if __name__ == "__main__":
    sys.exit(main())
