"""A rollout across a fleet: three model servers on one shared config, under steady load.

Three development model servers (`python -m serving`) poll one models.config and serve
one models tree, behind Debian's nginx round-robin (a small config of this test's own:
the fleet's upstream, no retries to another replica so that no failure is hidden); the
function runs in front with CANARY_PERCENT=20. The rollout tool, told every replica's
address, runs canary 3 -> promote -> rollback --stable while load threads keep asking.

Checked: no request fails; every answer's version is the one its label pointed at in a
config state that held while it was in flight (a state holds from the start of the
command that wrote it until the label cache has expired after the next command ends,
when every replica has converged); the tool reports convergence on all three replicas
within two config poll intervals for every label move and unload (a load adds the
model's load time); `status --json` has all three agreeing.
The figures (requests, failures, convergence per step) go to test-artifacts/rollout-fleet.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from infra.rollout.served import Served, parse, render, served_of, with_served
from recognizer import canary
from tests.conftest import PYTHON, ROOT, free_port, wait_until
from tests.support.dev_model_server import dev_model_server
from tests.support.function_server import running_function

REPLICAS = 3
CONFIG_POLL_SECONDS = 2.0  # each replica's --model_config_file_poll_wait_seconds
CANARY_PERCENT = 20
LABEL_CACHE_SECONDS = 0.5
DRAIN_SECONDS = 1.0  # > LABEL_CACHE_SECONDS
MIN_REQUESTS = 2_000
PER_STATE = 500  # answers in each served state before the next command
LOAD_THREADS = 4
CLIENTS = 200
REPORT = ROOT / "test-artifacts" / "rollout-fleet.json"
IMAGES = [ROOT / "tests" / "data" / "samples" / n for n in ("seven.png", "five-marker.png")]

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    upstream fleet {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nginx is not installed: `make nginx` (apt-get install nginx-light)")
    return found


@contextmanager
def round_robin(replicas: list[str]) -> Iterator[str]:
    """Debian's nginx balancing over `replicas` (nginx's default: round robin); its URL."""
    binary = nginx_binary()
    port = free_port()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-fleet-"))
    prefix.chmod(0o755)  # run as root, nginx's workers are `nobody`
    servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in replicas)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(servers=servers, port=port))
    command = [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/v1/models/mnist", timeout=2).ok, "nginx", 30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(prefix, ignore_errors=True)


@dataclass
class Fleet:
    config: Path
    models_dir: Path
    replicas: list[str]
    proxy: str
    function: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    models_dir = root / "models"
    for version in (2, 3):
        shutil.copytree(
            ROOT / "models" / "mnist" / str(version), models_dir / "mnist" / str(version)
        )
    shipped = (ROOT / "serving" / "models.config").read_text()
    config = root / "models.config"
    start = Served(frozenset({2}), {"stable": 2, "canary": 2})
    config.write_text(render(with_served(parse(shipped), "mnist", start), shipped))
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                dev_model_server(
                    config,
                    models_dir,
                    log=root / f"replica{n}.log",
                    config_poll_seconds=str(CONFIG_POLL_SECONDS),
                )
            )
            for n in range(REPLICAS)
        ]
        proxy = stack.enter_context(round_robin(replicas))
        function = stack.enter_context(
            running_function(
                proxy,
                root / "predictions.sqlite3",
                PREDICTION_STORE="sqlite",
                CANARY_PERCENT=str(CANARY_PERCENT),
                MODEL_LABEL_CACHE_SECONDS=str(LABEL_CACHE_SECONDS),
            )
        )
        yield Fleet(config, models_dir, replicas, proxy, function)


@dataclass
class Answer:
    sent: float
    received: float
    client: str
    label: str
    version: int


@dataclass
class Load:
    """Threads sending unpinned requests from CLIENTS clients until stopped."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Load:
        self.images = [path.read_bytes() for path in IMAGES]
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(LOAD_THREADS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def wait_for(self, more: int) -> None:
        target = len(self.answers) + len(self.failures) + more
        wait_until(lambda: len(self.answers) + len(self.failures) >= target, f"{more} answers", 600)

    def _run(self, thread: int) -> None:
        with requests.Session() as session:
            n = 0
            while not self.stop.is_set():
                client = f"client-{(n * LOAD_THREADS + thread) % CLIENTS}"
                sent = time.monotonic()
                try:
                    response = session.post(
                        f"{self.url}/predict",
                        data=self.images[n % len(self.images)],
                        headers={"Content-Type": "image/png", "X-Client-Id": client},
                        timeout=30,
                    )
                    received = time.monotonic()
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        model = response.json()["predictions"][0]["model"]
                        self.answers.append(
                            Answer(sent, received, client, model["label"], model["version"])
                        )
                except requests.RequestException as error:
                    self.failures.append(repr(error))
                n += 1


@dataclass
class Command:
    words: tuple[str, ...]
    started: float
    ended: float
    before: dict[str, int]
    after: dict[str, int]
    steps: list[tuple[str, float]]  # (step, seconds to converge on every replica)


def rollout(fleet: Fleet, *words: str) -> Command:
    before = served_of(parse(fleet.config.read_text()), "mnist").labels
    command = [PYTHON, "-m", "infra.rollout", *words, "--config", str(fleet.config),
               "--models-dir", str(fleet.models_dir), "--server", fleet.proxy,
               "--replicas", ",".join(fleet.replicas),
               "--config-poll-seconds", str(CONFIG_POLL_SECONDS)]  # fmt: skip
    if words[0] != "status":
        command += ["--poll-seconds", "0.1", "--drain-seconds", str(DRAIN_SECONDS)]
        command += ["--timeout", "120"]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    ended = time.monotonic()
    print(f"$ python -m infra.rollout {' '.join(words)}\n{done.stdout}")
    assert done.returncode == 0, done.stderr[-2000:]
    steps: list[tuple[str, float]] = []
    for line in done.stdout.splitlines():
        if match := re.match(r"step \d+/\d+: (.+)", line):
            why = match[1]
        elif match := re.match(r"  converged on (\d+) replica\(s\) in ([\d.]+) s", line):
            assert int(match[1]) == REPLICAS, line
            steps.append((why, float(match[2])))
    after = served_of(parse(fleet.config.read_text()), "mnist").labels
    return Command(words, started, ended, dict(before), dict(after), steps)


def allowed(answer: Answer, commands: list[Command]) -> set[int]:
    """The versions the answer's label pointed at in any state held while it was in flight."""
    states = [(float("-inf"), commands[0].before)]
    states += [(c.started, c.after) for c in commands]
    found = set()
    for n, (since, labels) in enumerate(states):
        until = commands[n].ended + LABEL_CACHE_SECONDS if n < len(commands) else float("inf")
        if since <= answer.received and answer.sent <= until:
            found.add(labels[answer.label])
    return found


def figures(load: Load, commands: list[Command]) -> dict:
    return {
        "replicas": REPLICAS,
        "config_poll_seconds": CONFIG_POLL_SECONDS,
        "requests": len(load.answers) + len(load.failures),
        "failures": len(load.failures),
        "answers_by_version": {
            str(v): sum(a.version == v for a in load.answers)
            for v in sorted({a.version for a in load.answers})
        },
        "convergence_seconds": [
            {"command": " ".join(c.words), "step": why, "seconds": took}
            for c in commands
            for why, took in c.steps
        ],
    }


def test_canary_promote_and_rollback_across_three_replicas_under_load(fleet):
    with Load(fleet.function) as load:
        load.wait_for(PER_STATE)
        commands = [rollout(fleet, "canary", "3")]
        load.wait_for(PER_STATE)
        commands.append(rollout(fleet, "promote"))
        load.wait_for(PER_STATE)
        commands.append(rollout(fleet, "rollback", "--stable"))
        load.wait_for(max(PER_STATE, MIN_REQUESTS - len(load.answers)))

    print(f"requests: {len(load.answers) + len(load.failures)}, failures: {len(load.failures)}")
    for command in commands:
        for why, took in command.steps:
            print(f"  {' '.join(command.words)}: {why}: converged in {took:.2f} s")
    assert load.failures == []
    assert len(load.answers) >= MIN_REQUESTS

    assert [c.after for c in commands] == [
        {"stable": 2, "canary": 3},
        {"stable": 3, "canary": 3},
        {"stable": 2, "canary": 2},
    ]
    wrong = [a for a in load.answers if a.version not in allowed(a, commands)]
    assert wrong == [], wrong[:5]
    # Canary clients were answered by the canary label (a fallback would say stable).
    in_canary = [a for a in load.answers if canary.bucket(canary.client_key(a.client, None))
                 < CANARY_PERCENT]  # fmt: skip
    assert in_canary and all(a.label == "canary" for a in in_canary)
    assert all(a.label == "stable" for a in load.answers if a not in in_canary)
    assert {a.version for a in load.answers} == {2, 3}

    every_step = [took for c in commands for _, took in c.steps]
    assert len(every_step) == 5  # load 3, point canary, point stable, point both back, unload 3
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(figures(load, commands), indent=2) + "\n")
    # A config-only step (a label move, an unload) is seen within two polls of every
    # replica; loading a version adds the model's own load time (3.4 s on an idle machine,
    # 15 s on a loaded one), which no poll interval bounds: it is reported, not judged.
    config_only = [took for c in commands for why, took in c.steps if not why.startswith("load")]
    assert max(config_only) <= 2 * CONFIG_POLL_SECONDS, every_step

    status = json.loads(
        subprocess.run(
            [
                PYTHON,
                "-m",
                "infra.rollout",
                "status",
                "--json",
                "--config",
                str(fleet.config),
                "--models-dir",
                str(fleet.models_dir),
                "--server",
                fleet.proxy,
                "--replicas",
                ",".join(fleet.replicas),
                "--sqlite",
                str(fleet.config.parent / "predictions.sqlite3"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    assert [r["url"] for r in status["replicas"]] == fleet.replicas
    assert all(r["agrees"] for r in status["replicas"]), status["replicas"]
    assert all(r["versions"] == {"2": "AVAILABLE", "3": "END"} for r in status["replicas"])
