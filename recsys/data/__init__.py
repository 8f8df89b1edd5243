"""Data layer: reading interaction logs, id maps, per-user sequences, splits and cached preparation.

Polars only: nothing here imports torch.nn, Lightning or MLflow (`batches.py` is the one torch user:
it turns sequences into tensors for training).
"""
