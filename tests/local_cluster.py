"""A real Redis Cluster of throw-away redis-server processes on local ports.

Used by tests/test_redis_cluster.py and bench/redis_cluster.py. Each node runs
`redis-server --cluster-enabled yes` in a folder of its own; `redis-cli --cluster create
... --cluster-yes` assigns the 16384 slots over the masters. `cluster-require-full-coverage
no` keeps the other masters answering while one is down (as the README recommends for a
cache), and a short `cluster-node-timeout` makes the cluster notice in about a second.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port nobody listens on right now (the cluster bus uses port + 10000)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 <= 65535:
            return port


class ClusterNodeProcess:
    """One cluster-enabled redis-server; stop and start it again with the same identity."""

    def __init__(self, port: int, folder: Path, node_timeout_ms: int) -> None:
        self.port = port
        self.folder = folder
        self.node_timeout_ms = node_timeout_ms
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # nodes.conf in the folder keeps the node's id and slots across a restart.
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        command += ["--appendonly", "no", "--cluster-enabled", "yes"]
        command += ["--cluster-config-file", "nodes.conf"]
        command += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        command += ["--cluster-require-full-coverage", "no"]
        command += ["--maxmemory-policy", "allkeys-lru"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = self.client()
        for _ in range(200):
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def freeze(self) -> None:
        """SIGSTOP: connections open but nothing answers, as behind a network partition."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: gone without a goodbye, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class LocalCluster:
    """`masters` cluster-enabled redis-servers (and `replicas` per master) on spare ports,
    joined into one cluster."""

    def __init__(
        self, folder: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000
    ) -> None:
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            ClusterNodeProcess(port, folder / str(port), node_timeout_ms)
            for port in (free_port() for _ in range(masters * (1 + replicas)))
        ]

    @property
    def url(self) -> str:
        """A URL naming one node (any node will do)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        command = [shutil.which("redis-cli") or "redis-cli", "--cluster", "create"]
        command += [node.name for node in self.nodes]
        command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every running node reports cluster_state:ok and knows every master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(node) for node in self.nodes if node.process is not None):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def _ok(self, node: ClusterNodeProcess) -> bool:
        client = node.client()
        try:
            info = client.cluster("info")
            slots = client.cluster("slots")
        except redis.RedisError:
            return False
        finally:
            client.close()
        state = info.get("cluster_state") if isinstance(info, dict) else None
        covered = sum(end - start + 1 for start, end, *_ in slots)
        masters = {tuple(entry[2][:2]) for entry in slots}
        return state == "ok" and covered == 16384 and len(masters) == self.masters

    def node_of_slot(self, slot: int) -> ClusterNodeProcess:
        """The master serving `slot` now (as a running node sees it)."""
        running = next(node for node in self.nodes if node.process is not None)
        client = running.client()
        try:
            for start, end, master, *_ in client.cluster("slots"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(node for node in self.nodes if node.port == port)
        finally:
            client.close()
        raise LookupError(f"slot {slot} is not served")

    def node_id(self, node: ClusterNodeProcess) -> str:
        client = node.client()
        try:
            return client.execute_command("CLUSTER MYID").decode()
        finally:
            client.close()

    def key_counts(self) -> dict[str, int]:
        """Keys held by each master (DBSIZE)."""
        counts = {}
        for node in self.nodes:
            client = node.client()
            try:
                counts[node.name] = int(client.dbsize())
            finally:
                client.close()
        return counts

    def flush(self) -> None:
        for node in self.nodes:
            if node.process is None:
                continue
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
