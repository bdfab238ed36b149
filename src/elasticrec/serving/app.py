"""HTTP service (FastAPI): stateless ``/recommend`` and server-held per-user streaming state.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``)::

    POST   /recommend                {"history": [...], "k": 10, "exclude_history": true}
    POST   /users/{id}/events        {"item": ..., "k": 10 (optional)}
    GET    /users/{id}/recommend?k=10&exclude_history=true
    DELETE /users/{id}
    GET    /health

Bad input never gives a 500: unknown items are skipped and listed (or 422 with
``unknown="error"``), unknown users 404, k outside ``1..min(n_items, 1000)`` 422, wrong types
422 (pydantic), each with a JSON ``{"detail": ...}`` message. Model calls and the user store
run under one lock; run it as one uvicorn process.
"""

from __future__ import annotations

from typing import Annotated, Union

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from elasticrec.serving.recommender import (
    MAX_K, UNKNOWN_POLICIES, Recommender, ServingError, UnknownUserError)
from elasticrec.serving.state import DEFAULT_MAX_USERS, UserStore

MAX_HISTORY = 100_000  # items per request body (longer histories are truncated anyway)

ItemId = Union[StrictInt, StrictStr]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId] = Field(max_length=MAX_HISTORY, description="raw item ids, oldest first")
    k: StrictInt = Field(10, description=f"1 <= k <= min(n_items, {MAX_K})")
    exclude_history: bool = True


class EventRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: ItemId = Field(description="raw item id of the new event")
    k: StrictInt | None = Field(None, description="return the new top-k (omit: acknowledgement only)")
    exclude_history: bool = True


class ScoredItem(BaseModel):
    item: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    history_len: int = Field(description="known items in the history")
    used_len: int = Field(description="items the model read")
    truncated: int = Field(description="oldest items beyond the model window (max_len)")
    skipped_unknown: list[str] = Field(description="raw ids not in the catalogue (skipped)")
    fallback: str | None = Field(description='"popularity" when the history had no known item')


class UserRecommendResponse(RecommendResponse):
    user: str
    source: str = Field(description='"held" (server state) or "dataset" (the dataset history)')


class EventResponse(BaseModel):
    user: str
    accepted: bool = Field(description="false when the item was unknown and skipped")
    n_events: int = Field(description="known items held for the user (dataset seed + events)")
    skipped_unknown: list[str]
    recommendation: RecommendResponse | None = None


class HealthResponse(BaseModel):
    status: str
    model: str
    n_items: int
    n_dataset_users: int
    max_len: int
    streaming: bool
    users_held: int
    max_users: int
    max_seen: int
    users_evicted: int
    unknown: str


def create_app(rec: Recommender, *, max_users: int = DEFAULT_MAX_USERS, max_seen: int | None = None,
               unknown: str = "skip", seed_from_dataset: bool = True) -> FastAPI:
    """The service for one :class:`Recommender` (``unknown``: ``skip`` or ``error``)."""
    if unknown not in UNKNOWN_POLICIES:
        raise ServingError(f"unknown={unknown!r}; choose one of {', '.join(UNKNOWN_POLICIES)}")
    store = UserStore(rec, max_users=max_users, max_seen=max_seen, seed_from_dataset=seed_from_dataset)
    app = FastAPI(title="elasticrec", version="1",
                  description=f"Top-k recommendations from a trained {rec.name} model.")
    app.state.rec, app.state.store = rec, store

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status if exc.status < 500 else 422)

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest):
        """Top-k for a history of raw item ids (stateless)."""
        r, = rec.recommend([req.history], k=req.k, exclude_history=req.exclude_history, unknown=unknown)
        return r.to_dict()

    def held_answer(st, k: int, exclude_history: bool) -> dict:
        items, fb = store.recommend(st, k, exclude_history)
        return {"items": [{"item": i, "score": s} for i, s in items], "history_len": st.n_events,
                "used_len": st.n_events - st.truncated, "truncated": st.truncated,
                "skipped_unknown": [], "fallback": fb}

    @app.post("/users/{user_id}/events", response_model=EventResponse)
    def add_event(user_id: Annotated[str, Path(max_length=256)], ev: EventRequest):
        """Append one event to the user's server-held state (created on first use: seeded with
        the dataset history of a dataset user, else empty); with ``k``, return the new top-k."""
        if ev.k is not None:
            rec.check_k(ev.k)
        ids, skipped = rec.to_internal([ev.item], unknown)
        with rec.lock:
            st = store.add_event(user_id, int(ids[0])) if len(ids) else store.get_or_create(user_id)
            out = {"user": user_id, "accepted": bool(len(ids)), "n_events": st.n_events,
                   "skipped_unknown": skipped}
            if ev.k is not None:
                out["recommendation"] = {**held_answer(st, ev.k, ev.exclude_history),
                                         "skipped_unknown": skipped}
        return out

    @app.get("/users/{user_id}/recommend", response_model=UserRecommendResponse)
    def user_recommend(user_id: Annotated[str, Path(max_length=256)],
                       k: Annotated[int, Query()] = 10, exclude_history: bool = True):
        """Top-k for a held user; a dataset user not held is answered from the dataset history."""
        with rec.lock:
            st = store.get(user_id)
            if st is not None:
                return {**held_answer(st, k, exclude_history), "user": user_id, "source": "held"}
        if user_id not in rec.user_index:
            raise UnknownUserError(f"unknown user {user_id!r}: not held by the server (send events "
                                   f"first) and not in the dataset")
        r = rec.recommend_user(user_id, k, exclude_history)
        return {**r.to_dict(), "user": user_id, "source": "dataset"}

    @app.delete("/users/{user_id}")
    def delete_user(user_id: Annotated[str, Path(max_length=256)]):
        """Drop the user's server-held state."""
        with rec.lock:
            if not store.delete(user_id):
                raise UnknownUserError(f"user {user_id!r} is not held by the server")
            return {"user": user_id, "deleted": True, "users_held": len(store)}

    @app.get("/health", response_model=HealthResponse)
    def health():
        return {"status": "ok", "model": rec.name, "n_items": rec.n_items,
                "n_dataset_users": len(rec.user_index), "max_len": rec.max_len,
                "streaming": store.streaming, "users_held": len(store), "max_users": store.max_users,
                "max_seen": store.max_seen, "users_evicted": store.evicted, "unknown": unknown}

    return app
