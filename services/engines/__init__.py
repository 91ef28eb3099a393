"""Database engine drivers (postgres, oracle) behind the engine Protocol."""
