"""Serving: HTTP over `recsys.retrieval.Recommender` (see `recsys.serving.http`)."""
