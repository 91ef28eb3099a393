"""What a contender run gives: seconds, or the exact reason it could not be run."""

from __future__ import annotations


class Unavailable(Exception):
    """A contender cannot be run here; the message says exactly why, for the report."""


class PeerUnavailable(Unavailable):
    """A peer (pgBackRest, barman-cloud) cannot be installed or run on this machine."""
