"""Test doubles, each named for what it stands in for. None of them is the real thing."""
