"""The same model behind LitServe, for benchmarks/serving.py's litserve_by_user scenario (not part of recsys:
LitServe is measured, not used; `pip install litserve` to run it).

    python benchmarks/litserve_app.py MODEL_DIR PORT [N]

POST /predict {"user_id": u, "k": 10} -> {"items": [{"item_id", "title", "score"}, ...]}: LitServe's dynamic
batching (max batch 64, no wait, as `recsys serve`'s defaults) over `Recommender.recommend_batch`, one inference
worker on one torch thread, LitServe's defaults otherwise; with N, N inference workers and N API server
processes (LitServe's own way to use more cores, against `recsys serve --processes N`).
"""

from __future__ import annotations

import sys

import recsys  # noqa: F401  - before torch: OpenMP threads wait passively (recsys.cpus)


import litserve as ls  # noqa: E402


class RecommendAPI(ls.LitAPI):  # at module level: LitServe pickles it into its inference worker
    def __init__(self, model: str, **options: object) -> None:
        super().__init__(**options)
        self.model = model

    def setup(self, device: str) -> None:
        import torch

        from recsys.retrieval import Recommender

        torch.set_num_threads(1)
        self.rec = Recommender.load(self.model)

    def decode_request(self, request: dict) -> object:
        return request["user_id"]

    def batch(self, users: list) -> list:
        return list(users)

    def predict(self, users: list) -> list:
        return self.rec.recommend_batch(users=users, k=10)

    def unbatch(self, results: list) -> list:
        return results

    def encode_response(self, recs: list) -> dict:
        return {"items": [{"item_id": r.item_id, "title": r.title, "score": r.score} for r in recs]}


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    server = ls.LitServer(RecommendAPI(model, max_batch_size=64, batch_timeout=0.0), accelerator="cpu",
                          workers_per_device=n)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, num_api_servers=n)


if __name__ == "__main__":
    main()
