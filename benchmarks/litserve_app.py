"""The same model behind LitServe, for benchmarks/serving.py's litserve_by_user scenario (not part of recsys:
LitServe is measured, not used; `pip install litserve` to run it).

    python benchmarks/litserve_app.py MODEL_DIR PORT

POST /predict {"user_id": u, "k": 10} -> {"items": [{"item_id", "title", "score"}, ...]}: LitServe's dynamic
batching (max batch 64, no wait, as `recsys serve`'s defaults) over `Recommender.recommend_batch`, one inference
worker on one torch thread, LitServe's defaults otherwise.
"""

from __future__ import annotations

import sys

import recsys  # noqa: F401  - before torch: OpenMP threads wait passively (recsys.cpus)


def main() -> None:
    import litserve as ls

    model, port = sys.argv[1], int(sys.argv[2])

    class RecommendAPI(ls.LitAPI):
        def setup(self, device: str) -> None:
            import torch

            from recsys.retrieval import Recommender

            torch.set_num_threads(1)
            self.rec = Recommender.load(model)

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

    server = ls.LitServer(RecommendAPI(max_batch_size=64, batch_timeout=0.0), accelerator="cpu",
                          workers_per_device=1)
    server.run(port=port, generate_client_file=False)


if __name__ == "__main__":
    main()
