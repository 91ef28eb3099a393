"""The embedded stack: nats-server from the wheel plus the four services on one machine."""
