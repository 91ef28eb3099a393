"""`make chaos-cluster`: the soak's stack on three routed nats-servers at `bus.replicas = 3`.

The embedded stack runs one nats-server; as deployed (the Helm chart), NATS is a JetStream
cluster and losing a node is a crash, not a restart. `ClusterStack` is the embedded stack with
its one server replaced by `NatsCluster` (the stack's users on every node): each service, the
CLI's settings and the soak's own clients get every node's URL, and every stream and bucket is
made at R3. The monkey then SIGKILLs one node at a time (a crash: JetStream's unsynced writes on
that node are gone, the other two hold a quorum) and starts it again on its ports and store.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.bus.permissions import Role
from services.settings import NatsSettings
from services.stack.credentials import client_settings, write_passwords
from services.stack.embedded import EmbeddedStack
from services.stack.lock import StateDirLock
from services.stack.natsserver import NatsServer, free_port
from tests.fixtures.natscluster import NatsCluster

#: Stream and bucket replicas: every server of the cluster holds each.
REPLICAS = 3


@dataclass
class ClusterStack(EmbeddedStack):
    cluster: NatsCluster | None = None

    def start_nats(self) -> NatsServer:
        self.lock = StateDirLock(self.state_dir)
        self.lock.acquire()
        self.logs_dir.mkdir(exist_ok=True)
        self.passwords = write_passwords(self.state_dir) if self.auth else {}
        self.cluster = NatsCluster(
            root=self.state_dir / "nats", size=REPLICAS, users=self.passwords, log_dir=self.logs_dir
        )
        self.cluster.start()
        # What the base class reports (stack.json, the monitor URL); clients get every node.
        self.nats = self.cluster.servers[0]
        if self.timeline_port is None:
            self.timeline_port = free_port()
        self._write_stack_file()
        return self.nats

    def client_settings(self, role: Role = Role.TOOL) -> NatsSettings:
        assert self.cluster is not None
        return client_settings(self.cluster.url, role, self.passwords)

    def service_env(self, name: str) -> dict[str, str]:
        assert self.cluster is not None
        env = super().service_env(name)
        env["TIDEMARK_NATS__URL"] = self.cluster.url
        env["TIDEMARK_BUS__REPLICAS"] = str(REPLICAS)
        return env

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)
        if self.cluster is not None:
            self.cluster.stop_all()
