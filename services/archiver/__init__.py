"""The archiver service."""
