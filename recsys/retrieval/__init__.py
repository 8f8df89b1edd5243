"""Retrieval: FAISS indexes over item vectors and `Recommender`, the public recommendation API."""

from recsys.retrieval.index import IndexConfig, ItemIndex
from recsys.retrieval.recommender import Recommendation, Recommender, UnknownItemsWarning

__all__ = ["IndexConfig", "ItemIndex", "Recommendation", "Recommender", "UnknownItemsWarning"]
