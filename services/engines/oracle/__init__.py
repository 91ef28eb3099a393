"""Oracle engine: python-oracledb sessions for V$ views, RMAN and Data Pump as subprocesses."""
