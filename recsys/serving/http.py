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
    POST /events           {"user_id": "u1", "item_id": 260, "timestamp": 1700000000} or {"events": [{...}, ...]}
                           (timestamp optional: the server's clock), optional "on_unknown": "error"|"skip"
                           -> {"stored": n, "skipped_items": [...]}, once the events are durably stored
                           (with `--history-store PATH`; see recsys.history_store)
    GET  /health           status, model name, n_items, n_users, format version, index kind, history store
    GET  /items/{item_id}  the item table's row for an item

Bad requests never reach the model as a 500: pydantic rejects wrong types, unknown fields, out-of-range values
and strings that are not Unicode (a lone surrogate such as "\ud800", echoed escaped) (422), a body that is not
UTF-8 is 422, bodies over MAX_BODY_BYTES are refused before they are parsed (413), an unknown user or item is
404 and any other RecsysError (k larger than what is left, an empty history) is 422. A request that HTTP itself
cannot frame (a malformed Content-Length) is a 400 with a JSON detail and the connection closed, as RFC 9112
(section 6.3) requires. A 500 means a bug: it is logged with its traceback and answered with a generic message.

Concurrent recommendation requests are gathered and encoded as one batch (`recsys.serving.batching`);
concurrent POST /events are committed as one transaction (`recsys.history_store.GroupCommit`). An
event for an item the model does not know is a 422 naming it, and nothing of that request is stored (or, with
"on_unknown": "skip", it is left out and listed); a store that cannot take the write (another process held it
past its busy timeout, a full disk) is a 503, and nothing of that request is stored.
Interactive docs (/docs) are served from the swagger-ui-bundle package: they work offline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import math
import os
import time
from typing import Annotated, Any, Literal

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recsys.errors import ConfigError, DataError, InvalidRequestError, RecsysError, UnknownIdError
from recsys.history_store import Event, GroupCommit, HistoryStore, HistoryStoreConfig, check_timestamp, user_key
from recsys.retrieval.recommender import Recommendation, Recommender, resolve_model_dir
from recsys.serving.batching import Batcher, BatchingConfig, Query

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_ITEMS = 1000  # per history, allow and deny list
MAX_BATCH = 256  # queries per batch request
MAX_BODY_BYTES = 1 << 20
MAX_EVENTS = 1000  # per POST /events

ItemId = StrictInt | Annotated[StrictStr, Field(max_length=200)]
ItemList = Annotated[list[ItemId], Field(max_length=MAX_ITEMS)]
Seconds = Annotated[float, Field(allow_inf_nan=False)]
TimeList = Annotated[list[Seconds], Field(max_length=MAX_ITEMS)]


class Options(BaseModel):
    """What every recommendation request may add to its query."""

    model_config = ConfigDict(extra="forbid")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: bool | None = Field(None, description="leave out the items of the user's history (null: as the "
                                      "model's config says, evaluation.exclude_seen)")
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


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: ItemId = Field(description="the user's original id: any id, known to the model or not")
    item_id: ItemId = Field(description="an item of the model's catalogue")
    timestamp: Seconds | None = Field(None, description="when it happened, Unix seconds (absent: the server's "
                                      "clock); at most a day after the server's clock")


class EventsRequest(BaseModel):
    """One event (user_id, item_id, timestamp at the top level) or many ("events")."""

    model_config = ConfigDict(extra="forbid")
    user_id: ItemId | None = None
    item_id: ItemId | None = None
    timestamp: Seconds | None = None
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS)] | None = None
    on_unknown: Literal["skip", "error"] = Field("error", description="events for unknown items: 422 naming "
                                                 "the item (nothing stored), or leave them out")

    @model_validator(mode="after")
    def _one_or_many(self) -> "EventsRequest":
        single = (self.user_id, self.item_id, self.timestamp) != (None, None, None)
        if single == (self.events is not None):
            raise ValueError("give either user_id and item_id (and timestamp) of one event, or events: [...]")
        if single and (self.user_id is None or self.item_id is None):
            raise ValueError("an event needs both user_id and item_id")
        return self

    def all_events(self) -> list[EventIn]:
        if self.events is not None:
            return self.events
        return [EventIn(user_id=self.user_id, item_id=self.item_id, timestamp=self.timestamp)]  # type: ignore[arg-type]


class EventsResponse(BaseModel):
    stored: int
    skipped_items: list[ItemId]


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
    history_store: str | None = None
    """The history store's path (`recsys serve --history-store`), None without one."""
    pid: int = 0
    """The id of the process that answered (`recsys serve --processes N` runs N of them on one port)."""


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: a lone surrogate echoed from the input is written as its escape (\\ud800)
    instead of failing UTF-8 encoding, which would turn a client's error into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace")


CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown user or item"},
    413: {"description": f"request body larger than {MAX_BODY_BYTES} bytes"},
    422: {"description": "invalid request: wrong types, unknown fields, values out of range, a body that is not "
                         "UTF-8 JSON, k larger than the items left"},
}
SWAGGER_STATIC = "/docs/static"


def create_app(recommender: Recommender, batching: BatchingConfig | None = None) -> FastAPI:
    """The FastAPI app serving `recommender` (loaded); recommendation requests go through a `Batcher` with
    `batching` (default BatchingConfig()), started and stopped with the app. With a history store in use
    (`recommender.use_history_store`), POST /events writes to it through a `GroupCommit`."""
    batcher = Batcher(recommender, batching)
    store = recommender.history_store
    writer = GroupCommit(store) if store is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if writer is not None:
            writer.start()
        try:
            yield
        finally:
            if writer is not None:
                writer.stop()
            batcher.stop()

    app = FastAPI(title="recsys", version="1", description="Next-item recommendations from a saved recsys model.",
                  docs_url=None, redoc_url=None, default_response_class=SafeJSONResponse, lifespan=lifespan)
    app.add_middleware(BodyGuard, max_bytes=MAX_BODY_BYTES)
    app.state.batcher = batcher
    app.state.events_writer = writer
    name = recommender.model_name
    _add_offline_docs(app)

    @app.get("/health")
    def health() -> Health:
        return Health(status="ok", model=name, n_items=recommender.n_items, n_users=recommender.n_users,
                      format_version=recommender.format_version, index=recommender.index_kind,
                      compiled=recommender.compiled, history_store=None if store is None else str(store.path),
                      pid=os.getpid())

    # Handlers return the JSON themselves (response_model only documents it): validating our own output
    # through pydantic again cost more per request than encoding it.
    @app.post("/recommend", response_model=RecommendResponse, responses=CLIENT_ERRORS)
    async def recommend(request: RecommendRequest) -> SafeJSONResponse:
        skipped: list[Any] = []
        if request.user_id is not None:
            query = _query(request, user=request.user_id)
        else:
            known, times, skipped = _history(recommender, request.items or [], request.timestamps,
                                             request.on_unknown)
            query = _query(request, history=known, timestamps=times)
        (recs,) = await batcher.recommend([query])
        return SafeJSONResponse({"items": _items(recs), "model": name, "skipped_items": skipped})

    @app.post("/recommend/batch", response_model=BatchResponse, responses=CLIENT_ERRORS)
    async def recommend_batch(request: BatchRequest) -> SafeJSONResponse:
        if request.user_ids is not None:
            queries = [_query(request, user=user) for user in request.user_ids]
            skipped: list[list[Any]] = [[] for _ in queries]
        else:
            histories = request.histories or []
            stamps = request.timestamps or [None] * len(histories)
            split = [_history(recommender, items, times, request.on_unknown) for items, times in zip(histories, stamps)]
            queries = [_query(request, history=known, timestamps=times) for known, times, _ in split]
            skipped = [row_skipped for _, _, row_skipped in split]
        results = await batcher.recommend(queries)
        return SafeJSONResponse({"results": [{"items": _items(r), "skipped_items": s} for r, s in zip(results, skipped)],
                                 "model": name})

    @app.post("/events", response_model=EventsResponse, responses={
        422: {"description": "invalid events: an unknown item, a bad timestamp, wrong types; nothing stored"},
        503: {"description": "the history store could not take the write; nothing stored"}})
    async def events(request: EventsRequest) -> SafeJSONResponse:
        if writer is None:
            raise InvalidRequestError("this server keeps no live histories: start it with --history-store PATH")
        stored, skipped = _events(recommender, request.all_events(), request.on_unknown)
        if stored:
            try:
                await asyncio.wrap_future(writer.submit(stored))
            except DataError as exc:
                return SafeJSONResponse(status_code=503, content={"detail": str(exc)})
        return SafeJSONResponse({"stored": len(stored), "skipped_items": skipped})

    @app.get("/items/{item_id}", responses={404: {"description": "unknown item"}})
    def item(item_id: str) -> dict[str, Any]:
        return recommender.item(item_id)

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(UnknownIdError, _unknown_id)
    app.add_exception_handler(RecsysError, _bad_request)
    app.add_exception_handler(Exception, _bug)
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle package (FastAPI's own page loads it from a CDN, blank
    offline)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(SWAGGER_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER_STATIC}/favicon-32x32.png")


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, index: str = "flat",
          tracking_uri: str | None = None, precompute_users: bool = False, compile: bool = False,
          batching: BatchingConfig | None = None, history_store: str | None = None,
          history: HistoryStoreConfig | None = None, access_log: bool = False, processes: int = 1) -> None:
    """Load `model` (a directory or an MLflow URI) and serve it until interrupted; with `precompute_users`
    every known user is encoded at start-up (see `Recommender.precompute_user_vectors`); `compile` as in
    `Recommender.load`; `batching` as in `create_app`; `history_store`: the SQLite file POST /events writes
    and recommendations read (created if missing), with the retention `history`; `access_log`: a log line per
    request (uvicorn's; off by default: writing it cost a tenth of the event loop's time per request).

    `processes` > 1 runs that many server processes on the one port (`_serve_processes`), each with its own
    copy of the model, batcher and event loop: one process's event loop and batch worker share one GIL, and
    a second process puts the other core to work (ml-1m SASRec by user_id, benchmarks/serving.py).
    They share the history store (SQLite takes writers from many processes) and read each user's events
    from it at every request, so an event POSTed to one is seen by all. The model is loaded here first, so
    that a bad model or setting fails once, with its one-line error, before any process starts."""
    import uvicorn

    _check_free(host, port)
    settings = {"model": str(resolve_model_dir(model, tracking_uri=tracking_uri)), "index": index,
                "precompute_users": precompute_users, "compile": compile,
                "batching": dataclasses.asdict(batching or BatchingConfig()), "history_store": history_store,
                "history": dataclasses.asdict(history or HistoryStoreConfig())}
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info", "http": JSONFramingErrors,
                               "access_log": access_log}
    if processes == 1:
        uvicorn.run(app_from_settings(settings), **options)
        return
    _ready_recommender(settings | {"precompute_users": False, "compile": False})  # checks; then dropped
    _serve_processes(settings, options, processes)


def _check_free(host: str, port: int) -> None:
    """DataError naming the address if something listens there already. Checked before the model loads, and
    needed by --processes: its sockets share the port (SO_REUSEPORT) with any socket that allows it, so a
    second `recsys serve --processes` on the same port would otherwise join the first, two models answering
    by turns."""
    _bound_socket(host, port, share_port=False).close()


def _bound_socket(host: str, port: int, share_port: bool) -> Any:
    """A TCP socket bound to host:port (a closed server's TIME_WAIT is no obstacle), with SO_REUSEPORT if
    `share_port`; DataError naming the address if it is taken.

    proto is given: asyncio sets TCP_NODELAY only on connections of a socket whose proto is IPPROTO_TCP, and
    without it Nagle's algorithm held each answer for the client's delayed ACK (p50 52 ms, 600 requests/s)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _serve_processes(settings: dict[str, Any], options: dict[str, Any], processes: int) -> None:
    """`processes` children, each serving the app on its own socket bound to the same address with
    SO_REUSEPORT, until SIGTERM or Ctrl-C here, or until one of them ends (then the others are stopped too).

    Why not uvicorn's own workers: they share one listening socket, and whichever process wakes first accepts;
    of 32 connections opened at once one process took 28 to 32, and the other sat idle. With SO_REUSEPORT the
    kernel spreads connections over the sockets by their addresses."""
    import multiprocessing
    import signal
    import socket
    import sys
    from multiprocessing.connection import wait

    if not hasattr(socket, "SO_REUSEPORT") or not sys.platform.startswith("linux"):
        # elsewhere the option is missing (Windows) or does not spread connections (macOS gives all to one)
        raise ConfigError(f"--processes {processes} needs Linux (SO_REUSEPORT spreads connections over the "
                          f"processes); this is {sys.platform}: run one process per port behind a proxy instead")

    def stop_here(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_here)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch or OpenMP state forked
    all_loaded = context.Barrier(processes)
    children = [context.Process(target=_serve_child, args=(settings, options, all_loaded), name=f"recsys-serve-{n}")
                for n in range(processes)]
    try:
        for child in children:
            child.start()
        wait([child.sentinel for child in children])  # until one ends
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: uvicorn finishes what it is answering
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    ended = [child for child in children if child.exitcode not in (0, -signal.SIGTERM)]
    if ended:
        raise DataError(f"server process {ended[0].name} ended with exit code {ended[0].exitcode} (its output is "
                        "above); the others were stopped")


def _serve_child(settings: dict[str, Any], options: dict[str, Any], all_loaded: Any) -> None:
    """One of `_serve_processes`'s servers (in a spawned interpreter). It listens only once every process has
    loaded the model (`all_loaded`, a barrier): the kernel gives a connection to one of the sockets listening
    when it arrives, keep-alive connections stay where they landed, and clients that connected while the
    second process was loading all went to the first."""
    import sys

    import uvicorn

    try:
        sock = _bound_socket(options["host"], options["port"], share_port=True)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = app_from_settings(settings)
    all_loaded.wait()  # a process that failed to load ends, and the supervisor stops the waiting ones
    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])


def app_from_settings(settings: dict[str, Any]) -> FastAPI:
    """`create_app` over the model and options of `serve` (as `settings`), ready to take traffic."""
    app = create_app(_ready_recommender(settings), BatchingConfig(**settings["batching"]))
    # The model's tables are a few hundred thousand Python objects that live as long as the server: left to the
    # cyclic collector, each full collection walks them all (113 ms for an ml-1m SASRec) inside some request,
    # which was the whole p99 of the serving benchmark. Frozen, the collector skips them.
    gc.collect()
    gc.freeze()
    return app


def _ready_recommender(settings: dict[str, Any]) -> Recommender:
    recommender = Recommender.load(settings["model"], index=settings["index"], compile=settings["compile"])
    if settings["history_store"] is not None:
        config = HistoryStoreConfig(**settings["history"])
        if config.max_per_user < recommender.max_len:
            raise ConfigError(f"--history-max-per-user {config.max_per_user} is shorter than the model's "
                              f"max_len {recommender.max_len}: keep at least as many events as it reads")
        recommender.use_history_store(HistoryStore(settings["history_store"], config))
    if settings["precompute_users"]:
        recommender.precompute_user_vectors()
    return recommender


class JSONFramingErrors(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp, in C), answering a request it cannot frame (a
    malformed Content-Length, a bad request line) with a one-line JSON 400 like every other error here, not
    plain text. httptools rather than uvicorn's pure-Python h11: parsing and framing were a fifth of the event
    loop's time per request (benchmarks/serving.py)."""

    def send_400_response(self, msg: str) -> None:
        payload = json.dumps({"detail": f"malformed HTTP request: {msg or 'invalid framing'}"}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        self.transport.close()


def _query(request: Options, user: Any = None, history: list[Any] | None = None,
           timestamps: list[float] | None = None) -> Query:
    return Query(user=user, history=history, timestamps=timestamps, k=request.k, exclude_seen=request.exclude_seen,
                 allow=None if request.allow is None else tuple(request.allow),
                 deny=None if request.deny is None else tuple(request.deny), at=request.at)


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


def _events(recommender: Recommender, events: list[EventIn], on_unknown: str) -> tuple[list[Event], list[Any]]:
    """(the events to store, ids as the catalogue spells them; the unknown items left out); DataError (a 422)
    naming the first unknown item (on_unknown="error") or bad timestamp, by its position in the request."""
    now = time.time()
    out: list[Event] = []
    skipped: list[Any] = []
    for position, event in enumerate(events):
        name = f"events[{position}]" if len(events) > 1 else "the event"
        item = recommender.known_item_id(event.item_id)
        if item is None:
            if on_unknown == "error":
                raise DataError(f"{name}: item_id {event.item_id!r} is not in the model's catalogue "
                                f"({recommender.n_items} items); nothing was stored")
            skipped.append(event.item_id)
            continue
        stamp = now if event.timestamp is None else check_timestamp(event.timestamp, name, now)
        out.append(Event(user_key(event.user_id), str(item), stamp))
    return out, skipped


def _items(recs: list[Recommendation]) -> list[dict[str, Any]]:
    return [{"item_id": r.item_id, "title": r.title, "score": r.score} for r in recs]


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, with the offending input echoed JSON-safely: Python's JSON parser accepts NaN and
    1e999 (infinity), which the response encoder then refuses, and a client error would become a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return SafeJSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


async def _unknown_id(request: Request, exc: Exception) -> JSONResponse:
    return SafeJSONResponse(status_code=404, content={"detail": str(exc)})


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    return SafeJSONResponse(status_code=422, content={"detail": str(exc)})


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return SafeJSONResponse(status_code=500, content={"detail": "internal server error (logged)"})


class BodyGuard:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before anything parses it, whether
    Content-Length announces it or a chunked body only turns out to be too long; a body that is not UTF-8 is
    answered 422 naming the first bad byte (JSON is UTF-8, RFC 8259; FastAPI would answer 400)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, f"request body larger than {self.max_bytes} bytes")
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
                await _refuse(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await _refuse(send, 422, f"request body is not UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start}")
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Any, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
