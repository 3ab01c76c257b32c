"""The local Cassandra launcher: what it tells a user who lacks something, and that no JVM
outlives it. Real Java, real Maven and real JVMs throughout; the only stand-ins are PATHs
that lack a tool, as a machine without it would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cassandra.cluster import Cluster

from infra.cassandra.__main__ import main
from infra.cassandra.local import (
    POM,
    LauncherError,
    LocalCluster,
    ToolMissing,
    cassandra_lib,
    free_ports,
    java_executable,
    on_free_ports,
    port_free,
    tokens,
)
from tests.conftest import ROOT
from tests.support.cassandra import start_test_node
from tests.support.signals import exits_within, hammered, signal_other_thread

JAVA_25 = Path("/usr/lib/jvm/temurin-25-jdk-amd64")


def bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only `tools` (linked from the real ones): a machine without the rest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if real:
            (bin_dir / tool).symlink_to(real)
    return str(bin_dir)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    """The cached jars (resolved by Maven once, as `make test` does), or a skip/failure."""
    start_test_node(tmp_path_factory.mktemp("probe")).stop()  # skips where no Java/Maven
    return cassandra_lib(os.environ, report=lambda _: None)


def test_no_java_says_which_java_to_install(tmp_path) -> None:
    with pytest.raises(ToolMissing, match=r"no Java found: Cassandra 5.0 needs Java 17"):
        java_executable({"PATH": bare_path(tmp_path)})


@pytest.mark.skipif(not JAVA_25.exists(), reason=f"no second JDK at {JAVA_25} to show it with")
def test_a_java_other_than_17_is_refused_with_its_version() -> None:
    with pytest.raises(ToolMissing, match=r"is Java 25, but this launcher runs Cassandra 5.0"):
        java_executable({"JAVA_HOME": str(JAVA_25)})


def test_a_java_home_without_java_is_named(tmp_path) -> None:
    with pytest.raises(ToolMissing, match=r"JAVA_HOME=.* has no bin/java"):
        java_executable({"JAVA_HOME": str(tmp_path)})


def test_no_maven_says_install_it_or_use_a_tarball(tmp_path) -> None:
    env = {"PATH": bare_path(tmp_path, "java"), "CASSANDRA_CACHE_DIR": str(tmp_path / "c")}
    with pytest.raises(ToolMissing, match=r"no Apache Maven \(mvn\) found.*CASSANDRA_HOME"):
        cassandra_lib(env)


def test_an_artifact_the_registry_does_not_serve_is_named(tmp_path, lib) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text(
        POM.read_text().replace(
            "<cassandra.version>5.0.8</cassandra.version>",
            "<cassandra.version>0.0.0-no-such-release</cassandra.version>",
        )
    )
    env = {**os.environ, "CASSANDRA_CACHE_DIR": str(tmp_path / "cache")}
    with pytest.raises(LauncherError) as raised:
        cassandra_lib(env, report=lambda _: None, pom_path=pom)
    assert "org.apache.cassandra:cassandra-all" in str(raised.value)
    assert "0.0.0-no-such-release" in str(raised.value)
    assert not any((tmp_path / "cache").rglob("*.jar")), "a failed fetch left jars behind"


def test_a_cassandra_home_without_jars_is_refused(tmp_path) -> None:
    with pytest.raises(LauncherError, match=r"CASSANDRA_HOME=.* has no lib/\*cassandra\*.jar"):
        cassandra_lib({"CASSANDRA_HOME": str(tmp_path)})


def test_a_port_in_use_is_named_before_any_jvm_starts(tmp_path, lib) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        storage, jmx = free_ports(2, ["127.0.0.1"])
        cluster = LocalCluster(
            tmp_path, native_port=port, storage_port=storage, jmx_port=jmx, report=print
        )
        with pytest.raises(LauncherError, match=rf"CQL port 127.0.0.1:{port} is in use"):
            cluster.start()
    assert cluster.node(1).process is None


def test_a_jvm_that_dies_is_reported_with_the_tail_of_its_log(tmp_path, lib) -> None:
    cluster = on_free_ports(
        tmp_path,
        heap="1M",
        report=lambda _: None,
    )
    with pytest.raises(LauncherError) as raised:
        cluster.start()
    first, *rest = str(raised.value).splitlines()
    assert "Cassandra node 1 exited (status 1) while starting" in first
    assert "jvm.log (last lines)" in "\n".join(rest)
    assert "heap" in "\n".join(rest).lower()  # the JVM's own words about the heap


def test_a_node_not_ready_in_time_is_killed_and_reported(tmp_path, lib) -> None:
    cluster = on_free_ports(
        tmp_path,
        durable=False,
        report=lambda _: None,
    )
    with pytest.raises(LauncherError, match=r"did not answer CQL within 1 s"):
        cluster.start(timeout=1.0)
    assert cluster.node(1).process is None


def test_tokens_are_balanced_over_the_ring() -> None:
    assert tokens(1) == [-(2**63)]
    assert tokens(3) == [-(2**63), -(2**63) + 2**64 // 3, -(2**63) + 2 * (2**64 // 3)]


def test_the_cli_reports_a_bad_port_in_one_line(capsys) -> None:
    assert main(["run"], env={**os.environ, "CASSANDRA_NATIVE_PORT": "nine"}) == 1
    assert capsys.readouterr().err == (
        "infra.cassandra: CASSANDRA_NATIVE_PORT must be a whole number from 1 to 65535, "
        "not 'nine'\n"
    )


def test_the_cli_names_every_malformed_setting_at_once(capsys) -> None:
    env = {**os.environ, "CASSANDRA_NATIVE_PORT": "0", "CASSANDRA_MAX_HEAP_SIZE": "lots"}
    assert main(["run"], env=env) == 1
    err = capsys.readouterr().err
    assert "CASSANDRA_NATIVE_PORT must be between 1 and 65535, not '0'" in err
    assert "CASSANDRA_MAX_HEAP_SIZE must be a heap size such as 512M or 1G, not 'lots'" in err


LAUNCHER = """
import sys
from infra.cassandra.local import LocalCluster
native, storage, jmx = map(int, sys.argv[2:5])
cluster = LocalCluster(sys.argv[1], native_port=native, storage_port=storage, jmx_port=jmx,
                       durable=False, report=lambda _: None).start()
print(cluster.node(1).process.pid, flush=True)
input()  # until killed
"""


def test_a_launcher_killed_with_sigkill_takes_its_jvm_with_it(tmp_path, lib) -> None:
    """Started from a tarball layout (CASSANDRA_HOME), the launcher is SIGKILLed: it cannot
    clean up, yet its JVM must not outlive it."""
    home = tmp_path / "apache-cassandra"
    home.mkdir()
    (home / "lib").symlink_to(lib)
    ports = [str(p) for p in free_ports(3, ["127.0.0.1"])]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "nodes"), *ports],
        cwd=ROOT,
        env={**os.environ, "CASSANDRA_HOME": str(home), "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        jvm = int(launcher.stdout.readline())
        os.kill(jvm, 0)  # alive
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(jvm, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(jvm, signal.SIGKILL)
        pytest.fail("the JVM outlived its SIGKILLed launcher")
    finally:
        launcher.kill()


def test_writes_acknowledged_just_before_a_sigkill_are_there_after_restart(tmp_path, lib) -> None:
    """On a test node too (no fsync): periodic commit-log sync acknowledged writes before
    their section was closed by a sync marker, and replay after a killed JVM dropped them."""
    cluster = on_free_ports(
        tmp_path,
        durable=False,
        report=lambda _: None,
    )
    with cluster:
        driver = Cluster(["127.0.0.1"], port=cluster.native_port, protocol_version=5)
        session = driver.connect()
        session.execute(
            "CREATE KEYSPACE k WITH replication = {'class': 'SimpleStrategy', "
            "'replication_factor': 1}"
        )
        session.execute("CREATE TABLE k.t (id int PRIMARY KEY)")
        time.sleep(11)  # past a periodic sync of the DDL: only the writes below are at risk
        for i in range(50):
            session.execute("INSERT INTO k.t (id) VALUES (%s)", (i,))
        driver.shutdown()
        cluster.kill_node(1)
        cluster.start_node(1)
        driver = Cluster(["127.0.0.1"], port=cluster.native_port, protocol_version=5)
        try:
            rows = driver.connect().execute("SELECT count(*) FROM k.t").one()
        finally:
            driver.shutdown()
    assert rows[0] == 50


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, None], ids=["SIGINT", "SIGTERM", "both, hammered"]
)
def test_the_cli_drains_and_exits_when_the_signal_reaches_another_thread(
    tmp_path, lib, signum
) -> None:
    """Ctrl-C may reach one of the driver's threads instead of the main one: the launcher
    once slept on in signal.pause() and `make demo STORE=cassandra` never stopped. And a
    second signal while the first is handled (the demo's Ctrl-C, then bash's SIGTERM) must
    not skip the drain."""
    for port in (7000, 7199):  # `run` uses the default storage and JMX ports
        if not port_free("127.0.0.1", port):
            pytest.skip(f"port {port} is taken on this machine: `run` needs it")
    [native] = free_ports(1, ["127.0.0.1"])
    ready = tmp_path / "ready"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "infra.cassandra", "run", "--test", "--dir", str(tmp_path / "n"),
         "--native-port", str(native), "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        jvms = [int(p) for p in Path(f"/proc/{launcher.pid}/task").glob("*/children")
                for p in p.read_text().split()]  # fmt: skip
        if signum is None:
            hammered(launcher, 0.5)
        else:
            signal_other_thread(launcher.pid, signum)
        assert launcher.wait(timeout=60) == 0
        assert all(exits_within(jvm, 5) for jvm in jvms)
        assert not ready.exists()
    finally:
        launcher.kill()
        launcher.wait()
