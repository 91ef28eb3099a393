"""PostgreSQL engine: real clusters, driven through their own tools."""
