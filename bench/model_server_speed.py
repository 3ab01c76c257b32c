"""Issue 15, "and be fast": the dev model server and the local stack, beside the baseline.

Three targets, measured side by side in one run (the machine's load average is recorded
at the start and the end, since a shared machine's figures are only comparable within
one run):

- the dev model server alone: a one-image :predict at concurrency 1, p50 <= 1 ms
  (`hey`, over HTTP with keep-alive, the JSON the function sends);
- the whole local stack (the function, WORKERS x THREADS, on the dev model server with
  serving/batching.config, SQLite) at concurrency 8: req/s >= the in-process baseline's
  (bench/baseline/app.py, same workers and threads), p99 <= 50 ms;
- a 64-image request >= 10x the images/s of single-image requests, through the function
  and against the dev model server alone.

With them, where the time goes: the dev server's stages in-process (JSON in, JSON into
tensors, the TensorFlow call, JSON out, the whole REST handler) for 1 and 64 images,
medians; and bench.profile_stack on the same model server: the cores and the function's
CPU by stage at concurrency 8, for one image at concurrency 1 and for 64 images.
`--serving-root DIR` runs the model server (and the stages) from another checkout, e.g.
`git archive <commit> serving | tar -x -C DIR`; BENCH_FUNCTION_SOURCE=DIR/function runs
another copy of function/; either measures before and after a change.

`--record` puts the run into docs/perf/results.json (as the issue-15 figures) and
redraws docs/performance.md; `--record-before LABEL` puts it there as the run to compare
with (run it right before or after the recorded one, on the same machine).

    .venv/bin/python -m bench.model_server_speed [--seconds 6] [--serving-root DIR]
        [--record | --record-before LABEL]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench import images, profile_stack, report, stack, throughput
from recognizer import contract

PREDICT = f"/v1/models/{contract.MODEL_NAME}/versions/2:predict"
SINGLE_REQUESTS = 2000
BATCH_REQUESTS = 40
TARGET_P50_MS = 1.0
TARGET_P99_MS = 50.0
TARGET_RATIO = 10.0
PROFILE_SECONDS = 4  # each of bench.profile_stack's loads


def predict_body(count: int) -> bytes:
    """The :predict body the function sends (columnar, uint8 pixels) for `count` images."""
    pixels = np.asarray(images.digit()).tolist()
    doc = {"signature_name": contract.SIGNATURE, "inputs": {contract.IMAGE: [pixels] * count}}
    return json.dumps(doc).encode()


@contextmanager
def model_server(batching: bool, serving_root: Path = stack.ROOT) -> Iterator[stack.Server]:
    """stack.model_server, optionally from another checkout's serving/ (models from ours)."""
    if serving_root == stack.ROOT:
        with stack.model_server(batching=batching) as server:
            yield server
        return
    port = stack.free_port()
    argv = [
        sys.executable, "-m", "serving", "--rest_api_port", str(port), "--port", "0",
        "--allow_version_labels_for_unavailable_models", "--models_dir", str(stack.ROOT / "models"),
    ]  # fmt: skip
    if batching:
        config = stack.ROOT / "serving" / "batching.config"
        argv += ["--enable_batching", "--batching_parameters_file", str(config)]
    log_path = Path(tempfile.gettempdir()) / f"bench-model-server-other-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # cwd: `-m serving` imports that checkout's package
            argv,
            cwd=serving_root,
            env={**os.environ, **stack.QUIET_TF},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = stack.Server("model-server", port, process, time.monotonic(), log_path)
        try:
            stack.wait_for(
                server, f"/v1/models/{contract.MODEL_NAME}/labels/stable/metadata", interval=0.2
            )
            yield server
        finally:
            stack.stop(process)


def dev_server(server: stack.Server) -> dict:
    """One image at concurrency 1 (latency), and 64 images per request against 1."""
    url = f"{server.url}{PREDICT}"
    single, batch = predict_body(1), predict_body(64)
    stack.hey(url, 1, single, "application/json", requests=300)  # warm-up
    stack.hey(url, 1, batch, "application/json", requests=5)
    one = stack.hey(url, 1, single, "application/json", requests=SINGLE_REQUESTS)
    many = stack.hey(url, 1, batch, "application/json", requests=BATCH_REQUESTS)
    return {
        "single": asdict(one) | {"failures": one.failures},
        "batch_of_64": asdict(many) | {"failures": many.failures},
        "images_per_s": {"single": one.rps, "batch_of_64": 64 * many.rps},
        "ratio": 64 * many.rps / one.rps,
    }


# ------------------------------------------------------------------ stages
def stages() -> dict:
    """Medians (us) of each stage of a :predict, in this process (run through a child)."""
    from serving import server as server_module
    from serving import tensors

    fields = {f.name for f in dataclasses.fields(server_module.ServerOptions)}
    options: dict = {}
    try:  # what the command line would run with, where the checkout has those flags
        from serving import __main__ as cli

        if "tensorflow_intra_op_parallelism" in fields:
            options["tensorflow_intra_op_parallelism"] = cli.DEFAULT_INTRA_OP
            options["tensorflow_inter_op_parallelism"] = cli.DEFAULT_INTER_OP
    except AttributeError:
        pass
    server = server_module.ModelServer(
        rest_api_port=0,
        port=None,
        file_system_poll_wait_seconds=0,
        model_config_file_poll_wait_seconds=0,
        allow_version_labels_for_unavailable_models=True,
        models_dir=stack.ROOT / "models",
        model_config_file=stack.ROOT / "serving" / "models.config",
        **options,
    ).start()
    api = server._http.api
    servable = server.repository.servable(contract.MODEL_NAME, 2, None)
    signature = servable.signature(contract.SIGNATURE)
    results = {}
    try:
        for count, repeats in ((1, 500), (64, 30)):
            body = predict_body(count)
            doc, _ = tensors.parse_body(body)
            fmt, inputs = tensors.request_tensors(doc, signature, may_contain_bools=False)
            outputs = servable.run(contract.SIGNATURE, inputs)
            steps = {
                "JSON in": lambda body=body: tensors.parse_body(body),
                "JSON into tensors": lambda doc=doc: tensors.request_tensors(
                    doc, signature, may_contain_bools=False
                ),
                "TensorFlow call": lambda inputs=inputs: servable.run(contract.SIGNATURE, inputs),
                "JSON out": lambda outputs=outputs, fmt=fmt: tensors.render_response(outputs, fmt),
                "REST handler": lambda body=body: api.handle("POST", PREDICT, body, {}),
            }
            results[str(count)] = {step: _median_us(run, repeats) for step, run in steps.items()}
    finally:
        server.stop()
    return results


def _median_us(function: object, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        function()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def stages_in_child(serving_root: Path) -> dict:
    """stages() in a fresh process, importing serving/ from `serving_root`."""
    env = {**os.environ, **stack.QUIET_TF, "PYTHONPATH": str(stack.ROOT)}
    output = subprocess.run(  # cwd first on sys.path: serving/ from serving_root, bench/ ours
        [sys.executable, "-m", "bench.model_server_speed", "--stages-json"],
        cwd=serving_root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# --------------------------------------------------------------------- all
def measure(
    seconds: float = 6,
    workers: int = 2,
    threads: int = 4,
    serving_root: Path = stack.ROOT,
) -> dict:
    """Every figure of issue 15 in one run; see the module docstring."""
    started = time.monotonic()
    result: dict = {
        "load_average_at_start": os.getloadavg()[0],
        "serving_root": str(serving_root),
        "function_source": str(stack.FUNCTION_SOURCE),
        "workers": workers,
        "threads": threads,
        "seconds": seconds,
    }
    result["stages_us"] = stages_in_child(serving_root)
    with model_server(False, serving_root) as plain:
        result["dev_server"] = {"without batching": dev_server(plain)}
    with model_server(True, serving_root) as server:
        result["dev_server"]["with batching"] = dev_server(server)
        result["stack"] = throughput.end_to_end(
            server.url, seconds, workers, threads, concurrency=(1, 8)
        )
        with (
            tempfile.TemporaryDirectory() as tmp,
            stack.function_server(
                server.url, Path(tmp) / "f.sqlite3", workers, threads
            ) as function,
        ):
            result["function_batches"] = throughput.batches(function.url)
        result["profile"] = profile_stack.profile(server, PROFILE_SECONDS, workers, threads)
    result["load_average_at_end"] = os.getloadavg()[0]
    result["total_seconds"] = time.monotonic() - started
    return result


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the three targets of issue 15."""
    dev = result["dev_server"]
    p50 = {name: dev[name]["single"]["p50_ms"] for name in dev}
    ours, base = result["stack"]["function"]["load"], result["stack"]["baseline"]["load"]
    ours8, base8 = ours.get("8", ours.get(8)), base.get("8", base.get(8))
    ratio = result["function_batches"]["ratio"]
    dev_ratio = dev["with batching"]["ratio"]
    return [
        (
            f"dev server one-image :predict p50 <= {TARGET_P50_MS:g} ms (c=1)",
            f"{p50['without batching']:.2f} ms (with batching {p50['with batching']:.2f} ms)",
            min(p50.values()) <= TARGET_P50_MS,
        ),
        (
            "stack at concurrency 8: req/s >= the baseline's",
            f"{ours8['rps']:.0f} vs {base8['rps']:.0f} req/s",
            ours8["rps"] >= base8["rps"],
        ),
        (
            f"stack at concurrency 8: p99 <= {TARGET_P99_MS:g} ms",
            f"{ours8['p99_ms']:.1f} ms (baseline {base8['p99_ms']:.1f} ms)",
            ours8["p99_ms"] <= TARGET_P99_MS,
        ),
        (
            f"64-image request >= {TARGET_RATIO:g}x images/s of single ones (function)",
            f"{ratio:.1f}x (dev server alone {dev_ratio:.1f}x)",
            ratio >= TARGET_RATIO,
        ),
    ]


def print_result(result: dict) -> None:
    print(
        f"load average {result['load_average_at_start']:.1f} at the start, "
        f"{result['load_average_at_end']:.1f} at the end; serving from {result['serving_root']}"
    )
    for target, measured, met in targets(result):
        print(f"  {'met   ' if met else 'MISSED'} {target}: {measured}")
    for name, dev in result["dev_server"].items():
        one, many = dev["single"], dev["batch_of_64"]
        print(
            f"dev server {name}: 1 image p50 {one['p50_ms']:.2f} ms p99 {one['p99_ms']:.2f} ms "
            f"({one['rps']:.0f}/s); 64 images p50 {many['p50_ms']:.1f} ms "
            f"({dev['images_per_s']['batch_of_64']:.0f} images/s, {dev['ratio']:.1f}x)"
        )
    for name, system in result["stack"].items():
        for c, load in system["load"].items():
            print(
                f"{name:8s} c={c}: {load['rps']:.0f} req/s p50 {load['p50_ms']:.1f} ms "
                f"p99 {load['p99_ms']:.1f} ms, {load['failures']} failed"
            )
    batches = result["function_batches"]
    print(
        f"function: 64 images/request {batches['batch_of_64']['images_per_s']:.0f} images/s, "
        f"1/request {batches['single']['images_per_s']:.0f}/s: {batches['ratio']:.1f}x"
    )
    for count, by_stage in result["stages_us"].items():
        text = ", ".join(f"{step} {us:,.0f}" for step, us in by_stage.items())
        print(f"stages, {count} image(s), median us: {text}")
    profile_stack.print_profile(result["profile"])


def record(result: dict, before_label: str | None = None) -> None:
    """Put `result` into docs/perf/results.json as issue 15's figures (or, with a label,
    as the run they are compared with) and redraw docs/performance.md."""
    results = json.loads(report.RESULTS.read_text())  # the last full run's, with this one's
    if before_label is None:
        before = results.get("model_server_speed", {}).get("before")
        results["model_server_speed"] = result | ({"before": before} if before else {})
    else:
        results["model_server_speed"]["before"] = result | {"label": before_label}
    report.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report.write(json.loads(report.RESULTS.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--serving-root", type=Path, default=stack.ROOT)
    parser.add_argument("--json", type=Path, help="also write the results here")
    recording = parser.add_mutually_exclusive_group()
    recording.add_argument("--record", action="store_true", help="into docs/perf/results.json")
    recording.add_argument("--record-before", metavar="LABEL", help="... as the run before")
    parser.add_argument("--stages-json", action="store_true", help=argparse.SUPPRESS)
    stack.add_stack_arguments(parser)
    args = parser.parse_args()
    if args.stages_json:
        print(json.dumps(stages()))
        return
    result = measure(args.seconds, args.workers, args.threads, args.serving_root.resolve())
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print_result(result)
    if args.record or args.record_before:
        record(result, args.record_before)


if __name__ == "__main__":
    main()
