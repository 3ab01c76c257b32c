"""Apache Cassandra on this machine without Docker: 1 or 3 real nodes from Maven Central's jars.

The jars come from `cassandra-all` (the version is set in pom.xml beside this file), resolved
by Maven once and cached outside the repo (CASSANDRA_CACHE_DIR); CASSANDRA_HOME, pointing at
an Apache Cassandra tarball, is used instead when set. Each node gets its own directory
(cassandra.yaml and logback.xml from templates/, data, commit log, hints, logs, tmp) and its
own loopback address, 127.0.0.i, with the same ports on each, as ccm lays nodes out.

A node is a child JVM that dies with the thread that started it (PR_SET_PDEATHSIG), so no
JVM outlives its launcher, however the launcher ends; `stop` drains with SIGTERM first and
sends SIGKILL only after a grace period. Every failure a user can meet is a LauncherError
whose first line says what is wrong and what to do.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
TEMPLATES = HERE / "templates"
CLUSTER_NAME = "digit-recognizer"
HEAP_SIZE = re.compile(r"[0-9]+[MG]")  # a JVM -Xmx value: 512M, 1G
DATACENTER = "datacenter1"  # what SimpleSnitch reports
READY_TIMEOUT_SECONDS = 180.0
STOP_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1

# conf/jvm-server.options and conf/jvm17-server.options of Cassandra 5.0, less what only
# suits large dedicated hosts (AlwaysPreTouch, NUMA, 16 MB G1 regions on a small heap).
JVM_OPTIONS = (
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-XX:+ExitOnOutOfMemoryError",  # a node out of memory may corrupt data: let it die
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-XX:StringTableSize=1000003",
    "-Djava.net.preferIPv4Stack=true",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    *(
        f"--add-exports={module}=ALL-UNNAMED"
        for module in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={module}=ALL-UNNAMED"
        for module in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
        )
    ),
)
# Start-up shortcuts that change no durability: one token, no bootstrap, no waits.
FAST_START = (
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.size_recorder_interval=0",
)
# Tests only, never data anyone keeps: the commit log's per-write sync still writes its
# sync marker (replay trusts only what a marker closes), but without the fsync. A killed
# JVM so loses no acknowledged write; only the machine crashing would. (Not
# cassandra.unsafesystem: it keeps the schema out of the commit log, and a killed node
# came back without its keyspaces.)
NO_SYNC = ("-Dcassandra.skip_sync=true",)


class LauncherError(Exception):
    """A problem a user can fix; str() starts with one line saying what and how."""


class ToolMissing(LauncherError):
    """No Java 17 or no Maven (and no CASSANDRA_HOME): Cassandra cannot run on this machine."""


def cache_dir(env: Mapping[str, str]) -> Path:
    """CASSANDRA_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache)/digit-recognizer/cassandra."""
    if env.get("CASSANDRA_CACHE_DIR"):
        return Path(env["CASSANDRA_CACHE_DIR"]).expanduser()
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "digit-recognizer" / "cassandra"


def java_executable(env: Mapping[str, str]) -> str:
    """$JAVA_HOME/bin/java, else `java` on the PATH; checked to be Java 17."""
    if env.get("JAVA_HOME"):
        java = str(Path(env["JAVA_HOME"]) / "bin" / "java")
        if not os.access(java, os.X_OK):
            raise ToolMissing(f"JAVA_HOME={env['JAVA_HOME']} has no bin/java: fix or unset it")
    else:
        found = shutil.which("java", path=env.get("PATH"))
        if found is None:
            raise ToolMissing(
                "no Java found: Cassandra 5.0 needs Java 17 "
                "(apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
            )
        java = found
    probe = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', probe.stderr + probe.stdout)
    major = match and (int(match[2]) if match[1] == "1" else int(match[1]))
    if major != 17:
        raise ToolMissing(
            f"{java} is Java {major or 'of unknown version'}, but this launcher runs Cassandra "
            "5.0 on Java 17 only: install OpenJDK 17 and set JAVA_HOME to it"
        )
    return java


def cassandra_lib(
    env: Mapping[str, str], report: Callable[[str], None] = print, pom_path: Path = POM
) -> Path:
    """The directory of Cassandra's jars: CASSANDRA_HOME/lib, or Maven's, resolved once."""
    if env.get("CASSANDRA_HOME"):
        lib = Path(env["CASSANDRA_HOME"]).expanduser() / "lib"
        if not any(lib.glob("*cassandra*.jar")):
            raise LauncherError(
                f"CASSANDRA_HOME={env['CASSANDRA_HOME']} has no lib/*cassandra*.jar: "
                "point it at an unpacked Apache Cassandra 5.0 tarball, or unset it to use Maven"
            )
        return lib
    pom = pom_path.read_bytes()
    target = cache_dir(env) / hashlib.sha256(pom).hexdigest()[:16]
    lib = target / "lib"
    if (target / "complete").exists():
        return lib
    mvn = shutil.which("mvn", path=env.get("PATH"))
    if mvn is None:
        raise ToolMissing(
            "no Apache Maven (mvn) found: install it (apt-get install maven), "
            "or set CASSANDRA_HOME to an Apache Cassandra 5.0 tarball"
        )
    report(f"Resolving Cassandra's jars with Maven into {lib} (once; about 70 MB) ...")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=target))
    command = [
        mvn,
        "--batch-mode",
        "--quiet",
        "--file",
        str(pom_path),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise LauncherError(_maven_failure(result.stdout + result.stderr))
    try:
        staging.rename(lib)
    except OSError:  # another launcher finished first: its copy is the same
        shutil.rmtree(staging, ignore_errors=True)
    (target / "complete").write_text(" ".join(sorted(p.name for p in lib.glob("*.jar"))))
    return lib


def _maven_failure(output: str) -> str:
    missing = re.search(r"Could not (?:find|transfer) artifact (\S+)", output)
    if missing:
        return (
            f"the registry does not serve {missing[1]}: exclude it in infra/cassandra/pom.xml "
            "(only if Cassandra runs without it; see the README) or set CASSANDRA_HOME"
        )
    lines = [line for line in output.splitlines() if "ERROR" in line] or output.splitlines()
    return "Maven could not resolve Cassandra's jars: " + (lines[0] if lines else "no output")


def tokens(count: int) -> list[int]:
    """Balanced Murmur3 tokens, one per node: i * 2**64 / n - 2**63."""
    return [index * (2**64 // count) - 2**63 for index in range(count)]


def port_free(address: str, port: int) -> bool:
    """Nothing listens there. SO_REUSEADDR, as Cassandra binds: TIME_WAIT does not count."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the launching thread ends, however it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Node:
    """One Cassandra JVM with its own address and directory."""

    index: int  # 1-based: node i listens on 127.0.0.i
    directory: Path
    native_port: int
    storage_port: int
    jmx_port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.{self.index}"

    @property
    def log(self) -> Path:
        return self.directory / "logs" / "system.log"

    @property
    def jvm_log(self) -> Path:
        return self.directory / "logs" / "jvm.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 25) -> str:
        """The last lines of the node's logs: what to show when it dies."""
        chunks = []
        for path in (self.log, self.jvm_log):
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                chunks.append(f"--- {path} (last lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(chunks) or f"(no log under {self.directory / 'logs'})"


@dataclass
class LocalCluster:
    """1 or 3 nodes under `root` (node1/, node2/, ...). Use as a context manager."""

    root: Path
    nodes: int = 1
    native_port: int = 9042
    storage_port: int = 7000
    jmx_port: int = 7199  # node i: jmx_port + i - 1 (JMX binds 127.0.0.1 only)
    durable: bool = True  # False: no fsync (still synced before each ack), for tests
    heap: str = "512M"
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    report: Callable[[str], None] = print
    members: list[Node] = field(init=False)

    def __post_init__(self) -> None:
        if self.nodes not in (1, 2, 3):
            raise LauncherError(f"{self.nodes} nodes: this launcher starts 1, 2 or 3")
        if not HEAP_SIZE.fullmatch(self.heap):
            raise LauncherError(f"CASSANDRA_MAX_HEAP_SIZE={self.heap!r}: use e.g. 512M or 1G")
        self.root = Path(self.root).resolve()
        self.members = [
            Node(i, self.root / f"node{i}", self.native_port, self.storage_port, jmx)
            for i, jmx in enumerate(range(self.jmx_port, self.jmx_port + self.nodes), start=1)
        ]
        self._java: str | None = None
        self._lib: Path | None = None

    @property
    def contact_points(self) -> str:
        """CASSANDRA_CONTACT_POINTS for the function: every node, host:port."""
        return ",".join(f"{node.address}:{node.native_port}" for node in self.members)

    def node(self, index: int) -> Node:
        return self.members[index - 1]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> LocalCluster:
        """Start every node, seed first, one after another; return once all answer CQL."""
        self._java = self._java or java_executable(self.env)
        self._lib = self._lib or cassandra_lib(self.env, self.report)
        try:
            for node in self.members:
                self.start_node(node.index, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, index: int, timeout: float = READY_TIMEOUT_SECONDS) -> Node:
        node = self.node(index)
        if node.running():
            return node
        self._java = self._java or java_executable(self.env)
        self._lib = self._lib or cassandra_lib(self.env, self.report)
        for port, what, address in (
            (node.native_port, "CQL", node.address),
            (node.storage_port, "storage", node.address),
            (node.jmx_port, "JMX", "127.0.0.1"),
        ):
            if not port_free(address, port):
                raise LauncherError(
                    f"{what} port {address}:{port} is in use (another Cassandra?): stop it, "
                    "or choose another port (CASSANDRA_NATIVE_PORT for the demo's CQL port)"
                )
        self._write_config(node)
        self.report(f"Starting Cassandra node {index} on {node.address}:{node.native_port} ...")
        node.jvm_log.parent.mkdir(parents=True, exist_ok=True)
        with node.jvm_log.open("ab") as jvm_log:
            node.process = subprocess.Popen(
                self._command(node),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=jvm_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher, which drains the nodes
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(node, timeout)
        return node

    def stop_node(self, index: int, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM (Cassandra drains: flushes memtables, tells its peers), then SIGKILL."""
        node = self.node(index)
        if node.process is None:
            return
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.report(f"Cassandra node {index} still running after {grace:.0f} s: SIGKILL")
                node.process.kill()
                node.process.wait()
        node.process = None

    def kill_node(self, index: int) -> None:
        """SIGKILL: a crash, as far as the other nodes can tell."""
        node = self.node(index)
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Drain every node, last first; never leaves a JVM behind."""
        for node in reversed(self.members):
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in reversed(self.members):
            self.stop_node(node.index, grace=grace)

    def nodetool(self, index: int, *args: str, timeout: float = 300.0) -> str:
        """Cassandra's own nodetool (from the same jars) against node `index`; its output."""
        self._java = self._java or java_executable(self.env)
        self._lib = self._lib or cassandra_lib(self.env, self.report)
        node = self.node(index)
        command = [
            self._java,
            "-Xmx128M",
            *(o for o in JVM_OPTIONS if o.startswith("--add-")),
            f"-Dcassandra.logdir={node.directory / 'logs'}",
            f"-Dlogback.configurationFile={node.directory / 'logback.xml'}",
            "-cp",
            f"{self._lib}/*",
            "org.apache.cassandra.tools.NodeTool",
            "-h",
            "127.0.0.1",
            "-p",
            str(node.jmx_port),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise LauncherError(
                f"nodetool {' '.join(args)} on node {index} failed: "
                + (result.stderr.strip() or result.stdout.strip())[-2000:]
            )
        return result.stdout

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- one node's files and command ----------------------------------------------------

    def _write_config(self, node: Node) -> None:
        for sub in (
            "data",
            "commitlog",
            "saved_caches",
            "hints",
            "cdc_raw",
            "logs",
            "tmp",
            "triggers",
        ):
            (node.directory / sub).mkdir(parents=True, exist_ok=True)
        yaml = Template((TEMPLATES / "cassandra.yaml").read_text(encoding="utf-8"))
        (node.directory / "cassandra.yaml").write_text(
            yaml.substitute(
                cluster_name=CLUSTER_NAME,
                initial_token=tokens(self.nodes)[node.index - 1],
                seeds=f"{self.members[0].address}:{self.storage_port}",
                address=node.address,
                storage_port=node.storage_port,
                native_port=node.native_port,
                directory=node.directory,
            ),
            encoding="utf-8",
        )
        shutil.copyfile(TEMPLATES / "logback.xml", node.directory / "logback.xml")

    def _command(self, node: Node) -> list[str]:
        assert self._java is not None and self._lib is not None
        jamm = sorted(self._lib.glob("jamm-*.jar"))
        if not jamm:
            raise LauncherError(f"{self._lib} has no jamm-*.jar: the jar cache is incomplete")
        tmp = node.directory / "tmp"  # JNA unpacks and runs its .so here: not a noexec /tmp
        return [
            self._java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            *JVM_OPTIONS,
            *FAST_START,
            *(() if self.durable else NO_SYNC),
            f"-javaagent:{jamm[-1]}",
            f"-Dcassandra.config=file://{node.directory / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={node.directory}",
            f"-Dcassandra.logdir={node.directory / 'logs'}",
            f"-Dcassandra.triggers_dir={node.directory / 'triggers'}",
            f"-Dlogback.configurationFile={node.directory / 'logback.xml'}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.jmx.local.port={node.jmx_port}",
            f"-Djava.io.tmpdir={tmp}",
            f"-Djna.tmpdir={tmp}",
            "-cp",
            f"{self._lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _wait_ready(self, node: Node, timeout: float) -> None:
        """Ready means CQL answers a query, not only that the port is open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running():
                status = node.process.returncode if node.process else "?"
                raise LauncherError(
                    f"Cassandra node {node.index} exited (status {status}) while starting; "
                    f"see {node.log}\n{node.tail()}"
                )
            if cql_answers(node.address, node.native_port):
                self.report(f"Cassandra node {node.index} is ready ({node.address}).")
                return
            time.sleep(1.0)
        self.kill_node(node.index)
        raise LauncherError(
            f"Cassandra node {node.index} did not answer CQL within {timeout:.0f} s "
            f"(a slow or busy machine? see {node.log})\n{node.tail()}"
        )


def cql_answers(address: str, port: int, timeout: float = 5.0) -> bool:
    """True when a CQL session on this one node answers `SELECT release_version`."""
    try:
        with socket.create_connection((address, port), timeout=1.0):
            pass
    except OSError:
        return False
    only_this = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]))
    cluster = Cluster(
        [address],
        port=port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: only_this},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
    )
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=timeout)
        return True
    except Exception:  # NoHostAvailable, OperationTimedOut, ...: anything but an answer
        return False
    finally:
        cluster.shutdown()


def on_free_ports(root: Path, nodes: int = 1, **options: Any) -> LocalCluster:
    """A cluster whose CQL, storage and JMX ports are free on every node's address: for
    tests and benchmarks, which must never take the ports a user's own node may hold."""
    addresses = [f"127.0.0.{i}" for i in range(1, nodes + 1)]
    while True:
        native, storage, jmx = free_ports(3, addresses)
        if all(port_free("127.0.0.1", jmx + i) for i in range(1, nodes)):  # node i: jmx + i - 1
            return LocalCluster(
                root, nodes, native_port=native, storage_port=storage, jmx_port=jmx, **options
            )


def free_ports(count: int, addresses: Sequence[str]) -> list[int]:
    """`count` distinct TCP ports free on every one of `addresses` (for test clusters)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        if port not in ports and all(port_free(a, port) for a in addresses):
            ports.append(port)
    return ports
