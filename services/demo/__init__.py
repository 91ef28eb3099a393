"""`make demo`: the guided point-in-time-restore tour on the embedded default."""
