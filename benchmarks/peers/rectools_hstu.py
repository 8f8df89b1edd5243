"""RecTools' HSTUModel on MovieLens, driven like ../shared/peers/run_rectools.py drives its SASRec (same data
loading, leave-one-out split, validation callback and test metrics), for benchmarks/hstu_speed.py. It runs in
the peers' virtual environment (RecTools 0.19), not ours:

    ~/peers-venv/bin/python benchmarks/peers/rectools_hstu.py --shared ../shared --data ml-1m --epochs 1

It lives here, not in ../shared/peers, because ../shared is read-only to the project. The model is the size of
configs/hstu_ml-1m.yaml: 2 blocks, 1 head, 64 factors, dropout 0.2, session_max_len 200, full softmax, batch
128, lr 1e-3, relative position and time attention on. HSTU's time bias reads the interactions' datetimes, so
they are the real timestamps (seconds), with each user's tied timestamps kept in file order by adding the row's
rank within the user in nanoseconds (RecTools sorts a user's interactions by datetime). Recommending needs each
user's context, the time it is asked: the test interaction's timestamp (time context: target).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, required=True, help="the shared folder (its peers/ and data/)")
    ap.add_argument("--data", default="ml-1m", help="dataset name as ../shared/peers/common.py knows it")
    ap.add_argument("--preset", choices=["raw", "papers"], default="raw")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--patience", type=int, default=0, help="early-stopping patience in epochs (0 = off)")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    os.environ.setdefault("SHARED_DATA", str(args.shared / "data"))
    sys.path.insert(0, str(args.shared / "peers"))
    warnings.filterwarnings("ignore")

    import common  # ../shared/peers/common.py: data and metrics, as for the other peers
    import numpy as np
    import pandas as pd
    import rectools
    import torch
    from pytorch_lightning import Trainer, seed_everything
    from pytorch_lightning.callbacks import EarlyStopping
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.dataset.context import get_context
    from rectools.models import HSTUModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet
    from run_rectools import ValNDCG, last_interaction_mask

    seed_everything(args.seed, workers=True)
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))
    df = common.load_interactions(args.data, preset=args.preset)
    hist = df[df.from_end >= 1]
    rank_in_user = hist.groupby("user_id").cumcount().to_numpy()
    nanoseconds = hist.timestamp.to_numpy().astype(np.int64) * 1_000_000_000 + rank_in_user
    dataset = Dataset.construct(pd.DataFrame({
        Columns.User: hist.user_id.to_numpy(), Columns.Item: hist.item_id.to_numpy(), Columns.Weight: 1.0,
        Columns.Datetime: pd.to_datetime(nanoseconds, unit="ns")}))

    def get_trainer() -> Trainer:
        callbacks = [ValNDCG(n_extra_tokens=1)]
        if args.patience > 0:
            callbacks.append(EarlyStopping(monitor="val_ndcg10", mode="max", patience=args.patience))
        return Trainer(max_epochs=args.epochs, min_epochs=1, accelerator="cpu", devices=1, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       num_sanity_val_steps=0, callbacks=callbacks, deterministic=False)

    model = HSTUModel(
        n_blocks=2, n_heads=1, n_factors=64, dropout_rate=0.2, session_max_len=200, loss="softmax", lr=1e-3,
        batch_size=128, epochs=args.epochs, relative_time_attention=True, relative_pos_attention=True,
        item_net_block_types=(IdEmbeddingsItemNet,), get_val_mask_func=last_interaction_mask,
        get_trainer_func=get_trainer, recommend_torch_device="cpu")
    t0 = time.perf_counter()
    model.fit(dataset)
    train_s = time.perf_counter() - t0
    cb = next(c for c in model.fit_trainer.callbacks if isinstance(c, ValNDCG))
    if cb.best_state is not None:
        model.lightning_model.load_state_dict(cb.best_state)
    t0 = time.perf_counter()
    # With the time bias on, RecTools asks for each user's context: the test interaction's time (its
    # "time context: target" protocol, as in its HSTU tutorial).
    test = df[df.from_end == 0]
    context = get_context(pd.DataFrame({
        Columns.User: test.user_id.to_numpy(),
        Columns.Datetime: pd.to_datetime(test.timestamp.to_numpy().astype(np.int64) * 1_000_000_000
                                         + test.groupby("user_id").cumcount().to_numpy() + 10**6, unit="ns")}))
    reco = model.recommend(users=test.user_id.unique(), dataset=dataset, k=common.K, filter_viewed=True,
                           context=context)
    rec_s = time.perf_counter() - t0
    metrics = common.evaluate_topk(
        reco.rename(columns={Columns.User: "user_id", Columns.Item: "item_id", Columns.Rank: "rank"}), df)
    common.emit({
        "peer": "rectools", "model": "hstu", "data": args.data, "preset": args.preset, "epochs": args.epochs,
        "train_s": round(train_s, 1),
        "s_per_epoch": round(float(np.mean(cb.epoch_train_s)), 2) if cb.epoch_train_s else None,
        "val_s_per_epoch": round(float(np.mean(cb.val_s)), 2) if cb.val_s else None,
        "hr10": metrics["hr10"], "ndcg10": metrics["ndcg10"], "best_epoch": cb.best_epoch,
        "peak_rss_mb": common.peak_rss_mb(), "recommend_s_all_users": round(rec_s, 2),
        **common.data_summary(df), "version": rectools.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    })


if __name__ == "__main__":
    main()
