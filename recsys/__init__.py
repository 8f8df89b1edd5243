"""recsys: sequential (next-item) recommendation, from a raw interaction log to a served model."""

__version__ = "0.1.0"
