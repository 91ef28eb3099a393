"""Tidemark services (planner, executor, archiver, catalog) and the runtime they share."""
