"""recsys: sequential (next-item) recommendation, from a raw interaction log to a served model."""

__version__ = "0.1.0"

from recsys.cpus import prefer_passive_waiting

# Before anything imports torch, whose OpenMP reads it once (see recsys.cpus).
prefer_passive_waiting()
