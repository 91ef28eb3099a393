"""The chaos monkey: at random intervals, SIGKILL one service or restart nats-server (on a
cluster, SIGKILL one NATS node and start it again).

A killed service gets no chance to clean up (no drain, no final ack, a half-written spool file or
journal row); the stack's supervisor (`EmbeddedStack.supervise_once`, called by `PitrStack`)
starts it again. nats-server is stopped and started on the same port, store directory and users,
with a pause between, so every service sees the bus disappear and has to reconnect. On a
three-node cluster (`make chaos-cluster`) a node is SIGKILLed instead, a crash, and started
again on its ports and store after a pause: the other two keep a quorum meanwhile, so clients
move to them, streams and consumers elect new leaders, and the node catches up when it is back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from services.stack.embedded import SERVICES
from services.stack.natsserver import NatsServerError
from tests.e2e.pitr_stack import PitrStack
from tests.fixtures.natscluster import NatsCluster

NATS = "nats-server"


@dataclass
class Monkey:
    pitr: PitrStack
    rng: random.Random
    say: Callable[[str], None]
    interval_s: tuple[float, float] = (10.0, 30.0)
    nats_share: float = 0.2
    """The share of actions that restart nats-server rather than kill a service."""
    nats_pause_s: tuple[float, float] = (0.5, 3.0)
    cluster: NatsCluster | None = None
    """The stack's NATS cluster: its nodes are killed instead of the one server restarted."""
    actions: Counter[str] = field(default_factory=Counter)

    async def run(self, until: float) -> None:
        """Act until the monotonic clock passes `until` (never starting an action after it)."""
        while True:
            wait = self.rng.uniform(*self.interval_s)
            if time.monotonic() + wait >= until:
                return
            await asyncio.sleep(wait)
            if self.rng.random() < self.nats_share:
                act = self._restart_nats if self.cluster is None else self._kill_node
                await asyncio.to_thread(act)
            else:
                self._kill_one()

    def _kill_one(self) -> None:
        running = [
            name
            for name in SERVICES
            if (proc := self.pitr.stack.procs[name].process) is not None and proc.poll() is None
        ]
        if not running:
            self.say("monkey: every service is down already; waiting for the supervisor")
            return
        victim = self.rng.choice(running)
        pid = self.pitr.kill(victim)
        self.actions[victim] += 1
        self.say(f"monkey: SIGKILL {victim} (pid {pid})")

    def _restart_nats(self) -> None:
        server = self.pitr.stack.nats
        assert server is not None
        pause = self.rng.uniform(*self.nats_pause_s)
        # SIGTERM, so JetStream flushes: what a NATS upgrade or node drain does. (A SIGKILL may
        # lose writes JetStream acknowledged but had not synced, which no client can survive.)
        server.stop()
        time.sleep(pause)
        server.start()
        self.actions[NATS] += 1
        self.say(f"monkey: restarted {NATS} on port {server.port} after {pause:.1f}s down")

    def _kill_node(self) -> None:
        assert self.cluster is not None
        i = self.rng.randrange(self.cluster.size)
        pause = self.rng.uniform(*self.nats_pause_s)
        node = self.cluster.servers[i]
        # SIGKILL, unlike the single server's restart: with three replicas a crash of one node
        # must lose nothing that was acknowledged (a quorum of two held it).
        self.cluster.kill(i)
        self.actions[f"nats-n{i}"] += 1
        self.say(f"monkey: SIGKILL nats node n{i} (port {node.port}); {pause:.1f}s down")
        time.sleep(pause)
        try:
            self.cluster.restart(i, timeout=60.0)
        except NatsServerError as exc:
            # The soak's verdict needs the node back; a slow catch-up is said, not fatal here.
            self.say(f"monkey: n{i} not healthy after its restart: {exc}")
            return
        self.say(f"monkey: nats node n{i} back and the cluster healthy")
