#!/usr/bin/env python3
"""A local single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for tests and development.

No Docker: the broker's jars are resolved from Maven Central with ``mvn`` (``dev/kafka/pom.xml``, which
holds the Kafka version) and cached in ``~/.cache/fastconsumer/kafka-<version>/`` (``$XDG_CACHE_HOME`` or
``$FASTCONSUMER_CACHE_DIR`` move it), so only the first run downloads anything. Needs ``java`` 17+ (or
``$JAVA_HOME``) and, on the first run only, ``mvn``. Standard library only.

As a module::

    from dev.broker import LocalBroker          # or put dev/ on sys.path and `import broker`

    with LocalBroker() as broker:              # free ports, data in a temp dir removed on stop()
        use(broker.bootstrap)                  # "127.0.0.1:PORT"
        broker.restart()                       # same ports, same data dir, topics and offsets kept

As a script::

    python dev/broker.py                       # prints the bootstrap address, runs until SIGINT/SIGTERM
    python dev/broker.py --port 9092 --data-dir /tmp/kafka-data
    python dev/broker.py --version-only        # the Kafka version from dev/kafka/pom.xml

The JVM gets ``PR_SET_PDEATHSIG`` (Linux), so it is killed when the Python process that started it dies,
even by SIGKILL: a crashed test run leaves no orphaned broker behind.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "BrokerError",
    "DEFAULT_JVM_FLAGS",
    "KAFKA_POM",
    "LocalBroker",
    "kafka_version",
    "jars_cached",
    "new_cluster_id",
    "resolve_jars",
]

KAFKA_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

#: Flags for the broker JVM: a modest heap and the GC settings of Kafka's own kafka-run-class.sh.
#: ``LocalBroker(jvm_flags=...)`` replaces them. Start-up speed comes from the AppCDS archive instead (see
#: ``LocalBroker``): the choice of GC made no measurable difference to start-up, and
#: -XX:TieredStopAtLevel=1 (C1 only) saves only ~0.25 s more but slows a broker that benchmarks push hard.
DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dlog4j2.disable.jmx=true",
)

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
# Logged by KafkaRaftServer.startup() as its very last step: after the controller has started, the broker
# has been unfenced, and the PLAINTEXT acceptor accepts requests (Kafka 4.x:
# "[KafkaRaftServer nodeId=1] Kafka Server started (kafka.server.KafkaRaftServer)").
_READY_RE = re.compile(rb"\] Kafka Server started")
_BIND_ERROR_RE = re.compile(rb"Address already in use|BindException")

# Everything the broker logs goes to stdout, which the broker's Popen sends to ``broker.log``.
_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker's jars could not be resolved, or the broker failed to format, start or stop."""


# --------------------------------------------------------------------------------------------------
# Version and jars
# --------------------------------------------------------------------------------------------------


def kafka_version(pom: Path | str = KAFKA_POM) -> str:
    """The Kafka version: the ``kafka.version`` property of ``dev/kafka/pom.xml``."""
    root = ET.parse(pom).getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None:
        node = root.find("properties/kafka.version")
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"{pom}: no <kafka.version> property")
    return node.text.strip()


def _cache_root() -> Path:
    explicit = os.environ.get("FASTCONSUMER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fastconsumer"


def _pom_digest(pom: Path) -> str:
    """A hash of the pom's content without comments and layout: editing a comment keeps the cache."""
    canonical = ET.canonicalize(from_file=str(pom), with_comments=False, strip_text=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _jars_ok(libs: Path, marker: Path, digest: str) -> bool:
    try:
        return marker.read_text().strip() == digest and any(libs.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def jars_cached(pom: Path | str = KAFKA_POM) -> bool:
    """Whether ``resolve_jars`` will find the jars in the cache (i.e. not run Maven)."""
    pom = Path(pom).resolve()
    home = _cache_root() / f"kafka-{kafka_version(pom)}"
    return _jars_ok(home / "libs", home / ".complete", _pom_digest(pom))


def resolve_jars(pom: Path | str = KAFKA_POM, *, mvn: str | None = None, timeout: float = 900.0) -> Path:
    """The folder holding the broker's jars, resolving them with Maven on the first call.

    The jars live in ``<cache>/kafka-<version>/libs``; ``<cache>/kafka-<version>/.complete`` records the
    SHA-256 of the pom they came from, so editing the pom (another Kafka or log4j version) re-resolves,
    and an interrupted copy is never used. A file lock makes concurrent callers (parallel test processes)
    resolve once.
    """
    pom = Path(pom).resolve()
    version = kafka_version(pom)
    digest = _pom_digest(pom)
    home = _cache_root() / f"kafka-{version}"
    libs, marker = home / "libs", home / ".complete"
    if _jars_ok(libs, marker, digest):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".lock"):
        if _jars_ok(libs, marker, digest):  # another process resolved them while we waited
            return libs
        mvn = mvn or shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                f"Kafka {version} jars are not cached in {home} and `mvn` is not on PATH to resolve them"
            )
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=home))
        try:
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ]
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc
            if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                out = proc.stdout.decode(errors="replace")[-4000:]
                raise BrokerError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{out}")
            marker.unlink(missing_ok=True)
            shutil.rmtree(libs, ignore_errors=True)
            for stale in home.glob("cds-*.jsa"):  # archives of the old jars: their class path is gone
                stale.unlink(missing_ok=True)
            staging.chmod(0o755)
            staging.rename(libs)
            marker.write_text(digest + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_cluster_id() -> str:
    """A cluster id as ``kafka-storage.sh random-uuid`` makes one: base64url of 16 random bytes, unpadded.

    Like Kafka's ``Uuid.randomUuid()`` it never starts with "-" (a command line would take it for an option)
    and is never the all-zero id.
    """
    while True:
        raw = os.urandom(16)
        cid = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if not cid.startswith("-") and any(raw):
            return cid


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise BrokerError("`java` (17 or newer) is not on PATH and $JAVA_HOME is not set")
    return java


def _cds_archive(libs: Path, java: str) -> Path:
    """Where the AppCDS archive for these jars and this exact JVM lives (beside ``libs``).

    A dynamic CDS archive is only valid for the JVM build that wrote it and the same class path; the name
    carries a key of the JVM binary, and ``resolve_jars`` deletes the archives when it replaces the jars.
    """
    real = os.path.realpath(java)
    st = os.stat(real)
    key = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return libs.parent / f"cds-{key}.jsa"


def _free_port(exclude: Iterable[int] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


# --------------------------------------------------------------------------------------------------
# Child processes that die with their parent
# --------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:  # loaded here, in the parent: the child between fork and exec only calls it
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    except (OSError, AttributeError):
        _libc = None


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    if _libc is None:
        return None
    prctl = _libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl() took effect
            os._exit(1)

    return preexec


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not only the process. A broker
# started from a short-lived thread (a thread pool worker, asyncio.to_thread) would be killed when that
# thread exits, so off the main thread the fork happens on a daemon thread that lives as long as the process.
_spawn_queue: queue.SimpleQueue | None = None
_spawn_lock = threading.Lock()


def _spawner() -> None:
    assert _spawn_queue is not None
    while True:
        fn, fut = _spawn_queue.get()
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)


def _popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    kwargs.setdefault("preexec_fn", _die_with_parent(os.getpid()))
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(cmd, **kwargs)
    global _spawn_queue
    with _spawn_lock:
        if _spawn_queue is None:
            _spawn_queue = queue.SimpleQueue()
            threading.Thread(target=_spawner, name="local-broker-spawner", daemon=True).start()
    fut: concurrent.futures.Future = concurrent.futures.Future()
    _spawn_queue.put((lambda: subprocess.Popen(cmd, **kwargs), fut))
    return fut.result()


# --------------------------------------------------------------------------------------------------
# Readiness probe
# --------------------------------------------------------------------------------------------------


_WARMUP_GROUP = b"fastconsumer-dev-broker-warmup"


def _kafka_call(port: int, api_key: int, api_version: int, body: bytes, timeout: float = 2.0) -> bytes | None:
    """One request/response round trip in the Kafka protocol (non-flexible versions only): the response
    body after the correlation id, or None if the broker didn't answer properly."""
    correlation_id = 0x0FC0FFEE
    client_id = b"fastconsumer-dev-broker"
    # request header v1: api_key, api_version, correlation_id, client_id (int16-length string)
    req = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(req)) + req)
            head = _recv_exact(s, 4)
            if head is None:
                return None
            resp = _recv_exact(s, struct.unpack(">i", head)[0])
    except OSError:
        return None
    if resp is None or len(resp) < 4 or struct.unpack(">i", resp[:4])[0] != correlation_id:
        return None
    return resp[4:]


def _api_versions_ok(port: int) -> bool:
    """The PLAINTEXT port answers an ApiVersions v0 request without error (a real protocol round trip)."""
    resp = _kafka_call(port, 18, 0, b"")
    return resp is not None and len(resp) >= 2 and struct.unpack(">h", resp[:2])[0] == 0


def _group_coordinator_ok(port: int) -> bool:
    """A FindCoordinator v0 request for a group succeeds.

    The first one makes the broker create ``__consumer_offsets`` (answering COORDINATOR_NOT_AVAILABLE until
    it has); doing that during start-up spares the first consumer group of a test librdkafka's ~3 s back-off
    before it asks again.
    """
    resp = _kafka_call(port, 10, 0, struct.pack(">h", len(_WARMUP_GROUP)) + _WARMUP_GROUP)
    return resp is not None and len(resp) >= 2 and struct.unpack(">h", resp[:2])[0] == 0


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# --------------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------------

_live: weakref.WeakSet[LocalBroker] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.stop()


class LocalBroker:
    """A single-node KRaft Kafka broker (combined broker+controller) in a child JVM on 127.0.0.1.

    ``start()`` resolves the jars (cached after the first run), writes ``server.properties`` with free
    ports (or ``port``/``controller_port``), formats the storage on first use and starts ``kafka.Kafka``,
    returning once the broker logged "Kafka Server started" (it is unfenced and accepting requests), answers
    a Kafka ApiVersions request on its PLAINTEXT port and, unless ``warm_up_groups=False``, has created
    ``__consumer_offsets`` (a FindCoordinator request succeeds), so a test's first consumer group joins at
    once instead of after librdkafka's ~3 s coordinator back-off.

    Start-up speed: the JVM uses an AppCDS archive of the broker's classes (``cds=True``; the environment
    variable ``FASTCONSUMER_KAFKA_CDS=0`` turns it off), written once into the jar cache when the first
    broker ever started stops cleanly (that stop takes ~2.5 s longer). Measured on the 2-core machine with
    Kafka 4.4.0 and Java 17: ``start()`` takes ~1.5-1.7 s with the archive (format ~0.4 s, JVM ~1.1-1.3 s),
    ~2.7 s without it, and ~8.5 s on a cold machine (empty ~/.m2: Maven downloads ~43 MB of jars, ~5 s).
    ``restart()`` takes ~2 s (clean stop ~0.3-0.5 s).

    Layout of ``dir`` (a temp dir, or ``data_dir`` when given): ``server.properties``, ``log4j2.properties``,
    ``broker.log`` (``log_path``: the JVM's stdout+stderr, appended across restarts) and ``data/``
    (``data_dir``: the KRaft metadata and topic logs, i.e. ``log.dirs``).

    ``stop()`` sends SIGTERM (a clean shutdown), SIGKILL after ``stop_timeout``; it removes ``dir`` unless
    ``keep_data`` (default: True when ``data_dir`` was given, False for a temp dir). ``restart()`` stops the
    JVM and starts it again on the same ports with the same data.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        keep_data: bool | None = None,
        overrides: Mapping[str, Any] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        jvm_flags: Iterable[str] | None = None,
        cds: bool | None = None,
        warm_up_groups: bool = True,
        node_id: int = 1,
        pom: str | os.PathLike[str] = KAFKA_POM,
    ) -> None:
        self.pom = Path(pom)
        self.version = kafka_version(self.pom)
        self.node_id = node_id
        self.overrides = dict(overrides or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.jvm_flags = list(DEFAULT_JVM_FLAGS if jvm_flags is None else jvm_flags)
        if cds is None:
            cds = os.environ.get("FASTCONSUMER_KAFKA_CDS", "1") != "0"
        self.cds = cds
        self.warm_up_groups = warm_up_groups
        self._cds_pending: tuple[Path, Path] | None = None  # (archive being dumped, its final name)
        self._fixed_ports = port is not None, controller_port is not None
        self.port: int | None = port
        self.controller_port: int | None = controller_port
        self._given_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.keep_data = (data_dir is not None) if keep_data is None else keep_data
        self.dir: Path | None = None
        self.cluster_id: str | None = None
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen | None = None
        self._log_fh: Any = None

    # -- public -----------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self._need_dir() / "data"

    @property
    def log_path(self) -> Path:
        return self._need_dir() / "broker.log"

    @property
    def config_path(self) -> Path:
        return self._need_dir() / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalBroker:
        """Resolve the jars, prepare the data dir (first time), start the JVM and wait until it's ready."""
        if self.is_running():
            raise BrokerError("broker already running")
        t0 = time.monotonic()
        libs = resolve_jars(self.pom)
        self.timings = {"resolve": time.monotonic() - t0}
        try:
            if self.dir is None:
                self._prepare(libs)
            attempts = 1 if all(self._fixed_ports) else 3
            for attempt in range(1, attempts + 1):
                try:
                    self._launch(libs)
                    break
                except _PortInUse:
                    if attempt == attempts:
                        raise
                    # a free port picked at random was taken before the JVM bound it: pick new ones
                    if not self._fixed_ports[0]:
                        self.port = None
                    if not self._fixed_ports[1]:
                        self.controller_port = None
                    self._write_config()
        except BaseException:
            # keep the files for a post-mortem (the error names the log); the next start() begins afresh
            self._stop_process(graceful=False)
            _live.discard(self)
            self._forget_dir()
            raise
        self.timings["total"] = time.monotonic() - t0
        _live.add(self)
        return self

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after ``stop_timeout``; SIGKILL at once if not ``graceful``) and
        remove ``dir`` unless ``keep_data``."""
        self._stop_process(graceful=graceful)
        _live.discard(self)
        if self.dir is not None and not self.keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._forget_dir()

    def restart(self, *, graceful: bool = True) -> LocalBroker:
        """Stop the JVM and start it again on the same ports with the same data dir.

        ``graceful=False`` kills it with SIGKILL first, i.e. a broker crash: the restart then recovers
        the logs from disk. The restarted broker cannot register until the controller has expired the
        dead one's session (``broker.session.timeout.ms``, 9 s by default: such a restart takes ~11 s);
        ``overrides={"broker.heartbeat.interval.ms": 500, "broker.session.timeout.ms": 3000}`` makes it ~4 s.
        """
        if self.dir is None:
            raise BrokerError("broker was never started (or its data was removed by stop())")
        self._stop_process(graceful=graceful)
        t0 = time.monotonic()
        libs = resolve_jars(self.pom)
        self.timings = {"resolve": time.monotonic() - t0, "format": 0.0}
        try:
            self._launch(libs)
        except _PortInUse as exc:
            raise BrokerError(f"cannot restart on the same ports: {exc}") from exc
        self.timings["total"] = time.monotonic() - t0
        _live.add(self)
        return self

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of ``broker.log`` (for error messages)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                data = fh.read()
        except (OSError, BrokerError):
            return "(no broker log)"
        text = data.decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        where = self.bootstrap if self.port else "-"
        return f"<LocalBroker kafka {self.version} {where} {state} dir={self.dir}>"

    # -- internals --------------------------------------------------------------------------------

    def _forget_dir(self) -> None:
        """The next start() prepares a new dir (or the given ``data_dir`` again) on new free ports."""
        self.dir = None
        self.cluster_id = None
        if not self._fixed_ports[0]:
            self.port = None
        if not self._fixed_ports[1]:
            self.controller_port = None

    def _need_dir(self) -> Path:
        if self.dir is None:
            raise BrokerError("broker not started")
        return self.dir

    def _prepare(self, libs: Path) -> None:
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            self.dir = self._given_dir
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="fastconsumer-kafka-"))
        self.data_dir.mkdir(exist_ok=True)
        (self.dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        self._write_config()
        meta = self.data_dir / "meta.properties"
        if meta.exists():  # a kept data dir, formatted by an earlier run
            m = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.MULTILINE)
            self.cluster_id = m.group(1) if m else None
            self.timings["format"] = 0.0
            return
        self.cluster_id = new_cluster_id()
        t0 = time.monotonic()
        java = _java()
        cmd = [
            java,
            *self._cds_flags(libs, java, dump=False),
            *self._jvm_base_flags(libs),
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            _STORAGE_TOOL,
            "format",
            f"--cluster-id={self.cluster_id}",
            f"--config={self.config_path}",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"### {time.strftime('%F %T')} formatting: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                rc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.start_timeout,
                    preexec_fn=_die_with_parent(os.getpid()),
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"storage format timed out; log tail:\n{self.log_tail()}") from exc
        if rc != 0:
            raise BrokerError(f"storage format failed (exit {rc}); log {self.log_path}:\n{self.log_tail()}")
        self.timings["format"] = time.monotonic() - t0

    def _properties(self) -> dict[str, str]:
        assert self.port is not None and self.controller_port is not None
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            # a static quorum: formatting needs no --standalone/--initial-controllers, and the voter's
            # endpoint is not written into the metadata log, so a kept data dir may come back on other ports
            "controller.quorum.voters": f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": 3,
            "auto.create.topics.enable": True,
            "group.initial.rebalance.delay.ms": 0,
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # Share groups (KIP-932) are on by default since Kafka 4.2 (the share.version feature, the
            # "share" protocol). These let a group config shorten a record's lock to a second (the SIGKILL
            # test; the broker's floor is 15 s) and a member join within a second (heartbeats every 0.5 s
            # instead of 5 s, assignments every 0.1 s).
            "group.share.min.record.lock.duration.ms": 1000,
            "group.share.min.heartbeat.interval.ms": 500,
            "group.share.heartbeat.interval.ms": 500,
            "group.share.assignment.interval.ms": 100,
            # The consumer group protocol (KIP-848): heartbeats every 0.5 s instead of 5 s, a session of
            # 6 s instead of 45 s, so a member joins, and a dead one is noticed, in test time.
            "group.consumer.heartbeat.interval.ms": 500,
            "group.consumer.min.heartbeat.interval.ms": 500,
            "group.consumer.session.timeout.ms": 6000,
            "group.consumer.min.session.timeout.ms": 6000,
        }
        props.update(self.overrides)
        return {k: _prop_value(v) for k, v in props.items()}

    def _write_config(self) -> None:
        if self.port is None:
            self.port = _free_port(exclude=[self.controller_port or 0])
        if self.controller_port is None:
            self.controller_port = _free_port(exclude=[self.port])
        lines = [f"# written by dev/broker.py (Kafka {self.version})"]
        lines += [f"{k}={_escape(v)}" for k, v in self._properties().items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _jvm_base_flags(self, libs: Path) -> list[str]:
        assert self.dir is not None
        return [
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            str(libs / "*"),
        ]

    def _cds_flags(self, libs: Path, java: str, *, dump: bool) -> list[str]:
        if not self.cds:
            return []
        archive = _cds_archive(libs, java)
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}"]
        if not dump or self._cds_pending is not None:
            return []
        # No archive yet: this run writes one when the JVM exits after SIGTERM, under a name of its own
        # (parallel brokers may each dump one); _stop_process() renames it into place.
        tmp = archive.with_name(f"{archive.name}.{os.getpid()}-{id(self):x}.tmp")
        self._cds_pending = (tmp, archive)
        return [f"-XX:ArchiveClassesAtExit={tmp}"]

    def _launch(self, libs: Path) -> None:
        assert self.dir is not None and self.port is not None
        java = _java()
        cmd = [
            java,
            *self.jvm_flags,
            *self._cds_flags(libs, java, dump=True),
            *self._jvm_base_flags(libs),
            _MAIN_CLASS,
            str(self.config_path),
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the JVM's lifetime
        log.write(f"### {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        offset = log.tell()
        t0 = time.monotonic()
        try:
            self._proc = _popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self._log_fh = log
        self._wait_ready(offset, time.monotonic() + self.start_timeout)
        self.timings["jvm"] = time.monotonic() - t0

    def _wait_ready(self, offset: int, deadline: float) -> None:
        assert self._proc is not None and self.port is not None
        seen_ready = False
        carry = b""
        delay = 0.02
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            while True:
                chunk = fh.read()
                if chunk:
                    text = carry + chunk
                    if _READY_RE.search(text):
                        seen_ready = True
                    if _BIND_ERROR_RE.search(text) and not seen_ready:
                        self._stop_process(graceful=False)
                        raise self._port_in_use()
                    carry = text[-256:]
                if seen_ready and _api_versions_ok(self.port):
                    if not self.warm_up_groups or _group_coordinator_ok(self.port):
                        return
                rc = self._proc.poll()
                if rc is not None:
                    if _BIND_ERROR_RE.search(carry + fh.read()):
                        self._stop_process(graceful=False)
                        raise self._port_in_use()
                    self._stop_process(graceful=False)
                    raise BrokerError(
                        f"Kafka broker exited with code {rc} during start-up; log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    self._stop_process(graceful=False)
                    raise BrokerError(
                        f"Kafka broker not ready after {self.start_timeout:g} s "
                        f"(saw 'Kafka Server started': {seen_ready}); log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(delay)  # polling interval, not synchronisation: the loop re-checks the state
                delay = min(delay * 1.5, 0.05)

    def _port_in_use(self) -> _PortInUse:
        return _PortInUse(
            f"Kafka broker could not bind its ports: PLAINTEXT 127.0.0.1:{self.port} or CONTROLLER "
            f"127.0.0.1:{self.controller_port} is already in use; log {self.log_path}:\n{self.log_tail(15)}"
        )

    def _stop_process(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        exited_cleanly = False
        try:
            if proc is not None and proc.poll() is None:
                if graceful:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=self.stop_timeout)
                        exited_cleanly = True
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                else:
                    proc.kill()
                    proc.wait()
        finally:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            if self._cds_pending is not None:
                tmp, archive = self._cds_pending
                self._cds_pending = None
                # only an archive the JVM finished writing on its own way out; a killed JVM leaves junk
                if exited_cleanly and tmp.exists() and tmp.stat().st_size > 0:
                    os.replace(tmp, archive)
                else:
                    tmp.unlink(missing_ok=True)


class _PortInUse(BrokerError):
    pass


def _prop_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


# --------------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------------


def _parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a local single-node Kafka broker (KRaft) until SIGINT/SIGTERM. "
        "Prints its bootstrap address on stdout; everything else goes to stderr."
    )
    parser.add_argument("--port", type=int, help="fixed PLAINTEXT port (default: a free one)")
    parser.add_argument("--controller-port", type=int, help="fixed CONTROLLER port (default: a free one)")
    parser.add_argument("--data-dir", help="keep config, log and data here (default: a temp dir, removed)")
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="extra server.properties entry (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="start-up timeout in seconds")
    parser.add_argument("--version-only", action="store_true", help="print the Kafka version and exit")
    args = parser.parse_args(argv)

    if args.version_only:
        print(kafka_version(), flush=True)
        return 0

    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    broker = LocalBroker(
        port=args.port,
        controller_port=args.controller_port,
        data_dir=args.data_dir,
        overrides=dict(args.override),
        start_timeout=args.timeout,
    )
    if not jars_cached():
        print(
            f"resolving the Kafka {broker.version} jars with Maven (first run only)...",
            file=sys.stderr,
            flush=True,
        )
    print(f"starting Kafka {broker.version} (KRaft, single node)...", file=sys.stderr, flush=True)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    t = {k: f"{v:.2f} s" for k, v in broker.timings.items()}
    print(
        f"Kafka {broker.version} ready at {broker.bootstrap} in {t.get('total')} (jars {t.get('resolve')},"
        f" format {t.get('format')}, jvm {t.get('jvm')}); log {broker.log_path}",
        file=sys.stderr,
        flush=True,
    )
    print(broker.bootstrap, flush=True)
    rc = 0
    try:
        while not stop_requested.wait(0.5):
            if not broker.is_running():
                print(f"error: the broker exited:\n{broker.log_tail()}", file=sys.stderr, flush=True)
                rc = 1
                break
    finally:
        print("stopping Kafka...", file=sys.stderr, flush=True)
        broker.stop()
        print("stopped", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
