"""HTTP over `Recommender`: FastAPI app + uvicorn. `recsys serve --model DIR|URI` runs it.

Endpoints (JSON; OpenAPI description at /openapi.json, interactive docs at /docs):
    POST /recommend        {"user_id": 42} or {"items": [1, 2, 3]} (optional "timestamps": one per item), "k": 10,
                           optional "at", "exclude_seen", "allow", "deny", "on_unknown": "skip"|"error"
                           -> {"items": [{"item_id", "title", "score"}, ...], "model": ..., "skipped_items": [...]}
    POST /recommend/batch  {"user_ids": [...]} or {"histories": [[...], ...]} (optional "timestamps": one list
                           per history) plus the same options
                           -> {"results": [{"items": [...], "skipped_items": [...]}, ...], "model": ...}

Timestamps (seconds) and `at` (when the recommendation is asked for; absent: no time context) matter to models
that read time; other models accept and ignore them.
    GET  /health           status, model name, n_items, n_users, format version, index kind
    GET  /items/{item_id}  the item table's row for an item

Bad requests never reach the model as a 500: pydantic rejects wrong types, unknown fields and out-of-range
values (422), bodies over MAX_BODY_BYTES are refused before they are parsed (413), an unknown user or item is
404 and any other RecsysError (k larger than what is left, an empty history) is 422. A 500 means a bug: it is
logged with its traceback and answered with a generic message.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from recsys.errors import RecsysError, UnknownIdError
from recsys.retrieval.recommender import Recommendation, Recommender

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_ITEMS = 1000  # per history, allow and deny list
MAX_BATCH = 256  # queries per batch request
MAX_BODY_BYTES = 1 << 20

ItemId = StrictInt | Annotated[StrictStr, Field(max_length=200)]
ItemList = Annotated[list[ItemId], Field(max_length=MAX_ITEMS)]
Seconds = Annotated[float, Field(allow_inf_nan=False)]
TimeList = Annotated[list[Seconds], Field(max_length=MAX_ITEMS)]


class Options(BaseModel):
    """What every recommendation request may add to its query."""

    model_config = ConfigDict(extra="forbid")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: bool = Field(True, description="leave out the items of the user's history")
    allow: ItemList | None = Field(None, description="only recommend among these item ids")
    deny: ItemList | None = Field(None, description="never recommend these item ids")
    on_unknown: Literal["skip", "error"] = Field("skip", description="unknown history items: skip or 404")
    at: Seconds | None = Field(None, description="when the recommendation is asked for, in seconds (models that "
                               "read time; absent: no time context)")


class RecommendRequest(Options):
    user_id: ItemId | None = Field(None, description="a known user's original id")
    items: ItemList | None = Field(None, description="original item ids, oldest first")
    timestamps: TimeList | None = Field(None, description="when each of `items` happened, in seconds")

    @model_validator(mode="after")
    def _one_query(self) -> "RecommendRequest":
        if (self.user_id is None) == (self.items is None):
            raise ValueError("give exactly one of user_id or items")
        if self.timestamps is not None and (self.items is None or len(self.timestamps) != len(self.items)):
            raise ValueError("timestamps need items, one per item")
        return self


class BatchRequest(Options):
    user_ids: Annotated[list[ItemId], Field(max_length=MAX_BATCH)] | None = None
    histories: Annotated[list[ItemList], Field(max_length=MAX_BATCH)] | None = None
    timestamps: Annotated[list[TimeList], Field(max_length=MAX_BATCH)] | None = None

    @model_validator(mode="after")
    def _one_query(self) -> "BatchRequest":
        if (self.user_ids is None) == (self.histories is None):
            raise ValueError("give exactly one of user_ids or histories")
        if self.timestamps is not None and (self.histories is None or [len(t) for t in self.timestamps]
                                            != [len(h) for h in self.histories]):
            raise ValueError("timestamps need histories, one list per history and one time per item")
        return self


class ItemOut(BaseModel):
    item_id: ItemId
    title: str | None
    score: float


class RecommendResponse(BaseModel):
    items: list[ItemOut]
    model: str
    skipped_items: list[ItemId]


class BatchResult(BaseModel):
    items: list[ItemOut]
    skipped_items: list[ItemId]


class BatchResponse(BaseModel):
    results: list[BatchResult]
    model: str


class Health(BaseModel):
    status: str
    model: str
    n_items: int
    n_users: int
    format_version: int
    index: str
    compiled: bool
    """Whether the encoder runs compiled (`recsys serve --compile` and torch.compile worked)."""


def create_app(recommender: Recommender) -> FastAPI:
    """The FastAPI app serving `recommender` (loaded). Routes are sync: uvicorn runs them in its thread pool,
    which Recommender and FAISS searches allow."""
    app = FastAPI(title="recsys", version="1", description="Next-item recommendations from a saved recsys model.")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    name = recommender.model_name

    @app.get("/health")
    def health() -> Health:
        return Health(status="ok", model=name, n_items=recommender.n_items, n_users=recommender.n_users,
                      format_version=recommender.format_version, index=recommender.index_kind,
                      compiled=recommender.compiled)

    @app.post("/recommend", responses={404: {"description": "unknown user or item"}})
    def recommend(request: RecommendRequest) -> RecommendResponse:
        if request.user_id is not None:
            recs = recommender.recommend(user=request.user_id, **_options(request))
            return RecommendResponse(items=_items(recs), model=name, skipped_items=[])
        known, times, skipped = _history(recommender, request.items or [], request.timestamps, request.on_unknown)
        recs = recommender.recommend(history=known, timestamps=times, **_options(request))
        return RecommendResponse(items=_items(recs), model=name, skipped_items=skipped)

    @app.post("/recommend/batch", responses={404: {"description": "unknown user or item"}})
    def recommend_batch(request: BatchRequest) -> BatchResponse:
        if request.user_ids is not None:
            results = recommender.recommend_batch(users=request.user_ids, **_options(request))
            return BatchResponse(results=[BatchResult(items=_items(r), skipped_items=[]) for r in results], model=name)
        histories = request.histories or []
        stamps = request.timestamps or [None] * len(histories)
        split = [_history(recommender, items, times, request.on_unknown) for items, times in zip(histories, stamps)]
        times = None if request.timestamps is None else [row_times for _, row_times, _ in split]
        results = recommender.recommend_batch(histories=[known for known, _, _ in split], timestamps=times,
                                              **_options(request))
        return BatchResponse(results=[BatchResult(items=_items(r), skipped_items=skipped)
                                      for r, (_, _, skipped) in zip(results, split)], model=name)

    @app.get("/items/{item_id}", responses={404: {"description": "unknown item"}})
    def item(item_id: str) -> dict[str, Any]:
        return recommender.item(item_id)

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(UnknownIdError, _unknown_id)
    app.add_exception_handler(RecsysError, _bad_request)
    app.add_exception_handler(Exception, _bug)
    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, index: str = "flat",
          tracking_uri: str | None = None, precompute_users: bool = False, compile: bool = False) -> None:
    """Load `model` (a directory or an MLflow URI) and serve it until interrupted; with `precompute_users`
    every known user is encoded at start-up (see `Recommender.precompute_user_vectors`); `compile` as in
    `Recommender.load`."""
    import uvicorn

    recommender = Recommender.load(model, index=index, tracking_uri=tracking_uri, compile=compile)
    if precompute_users:
        recommender.precompute_user_vectors()
    uvicorn.run(create_app(recommender), host=host, port=port, log_level="info")


def _options(request: Options) -> dict[str, Any]:
    return {"k": request.k, "exclude_seen": request.exclude_seen, "allow": request.allow, "deny": request.deny,
            "at": request.at}


def _history(recommender: Recommender, items: list[Any], timestamps: list[float] | None,
             on_unknown: str) -> tuple[list[Any], list[float] | None, list[Any]]:
    """(known items, their timestamps, skipped items); with on_unknown='error' any unknown item is a 404
    naming it."""
    known, unknown = recommender.split_known(items)
    if unknown and on_unknown == "error":
        shown = ", ".join(repr(item) for item in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise UnknownIdError(f"unknown item ids [{shown}] ({recommender.n_items} items known)")
    if not known:
        return items, timestamps, unknown  # the Recommender then says why the history is empty
    if timestamps is not None and unknown:
        kept = recommender.known_positions(items)
        timestamps = [timestamps[position] for position in kept]
    return known, timestamps, unknown


def _items(recs: list[Recommendation]) -> list[ItemOut]:
    return [ItemOut(item_id=r.item_id, title=r.title, score=r.score) for r in recs]


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, with the offending input echoed JSON-safely: Python's JSON parser accepts NaN and
    1e999 (infinity), which the response encoder then refuses, and a client error would become a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


async def _unknown_id(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": str(exc)})


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal server error (logged)"})


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before anything parses it, whether
    Content-Length announces it or a chunked body only turns out to be too long."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send)
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        payload = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
