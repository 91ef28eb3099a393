"""What every service process shares: connect, ensure the topology, run consumers, report
health, drain on shutdown."""

from services.runtime.service import ConsumerSpec, Service, run_service

__all__ = ["ConsumerSpec", "Service", "run_service"]
