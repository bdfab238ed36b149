"""Server-held per-user state for streaming updates, in a bounded LRU store.

Per user the store keeps

* the model input: if the model supports streaming (``model.supports_streaming``, ELASTIC with
  ``chunk_align=start``) its constant-size streaming state (``init_state`` / ``prefill`` /
  ``update``); otherwise a fixed ``int64[max_len]`` window of the most recent items (a bounded
  deque) that is re-encoded on every request;
* the seen-item list used for history exclusion: unique internal ids as ``int32``, most recent
  last, capped at ``max_seen`` (the oldest-seen items drop out first);
* the event count.

Bytes per user (worst case): window ``8 * max_len`` (or ``model.state_nbytes(state)``) +
seen ``4 * max_seen`` + about 480 bytes of Python objects (measured with tracemalloc);
:meth:`UserStore.nbytes` gives one user's figure. At most ``max_users`` users are held: adding
one more evicts the least recently used (every read or write of a user makes it the most recent).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from elasticrec.serving.recommender import Recommender, ServingError

DEFAULT_MAX_USERS = 100_000
DEFAULT_MAX_SEEN = 1024


@dataclass
class UserState:
    window: np.ndarray | None  # int64 [max_len], left-padded (deque branch)
    stream: Any  # the model's streaming state (streaming branch)
    seen: np.ndarray  # int32 unique items, most recent last
    n_events: int = 0  # known items applied (dataset seed + events)
    truncated: int = 0  # items the model does not read (window branch: beyond max_len)


class UserStore:
    """LRU map raw user id -> :class:`UserState` for one :class:`Recommender`.

    Not locked itself: callers hold ``rec.lock`` (the server does) around every call.
    """

    def __init__(self, rec: Recommender, max_users: int = DEFAULT_MAX_USERS,
                 max_seen: int | None = None, seed_from_dataset: bool = True):
        if max_users < 1:
            raise ServingError(f"max_users must be >= 1, got {max_users}")
        self.rec = rec
        self.max_users = int(max_users)
        self.max_seen = int(max_seen if max_seen is not None else max(DEFAULT_MAX_SEEN, rec.max_len))
        if self.max_seen < 1:
            raise ServingError(f"max_seen must be >= 1, got {max_seen}")
        self.seed_from_dataset = seed_from_dataset
        self.streaming = rec.supports_streaming
        self.users: OrderedDict[str, UserState] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.users)

    def __contains__(self, user: str) -> bool:
        return user in self.users

    # ------------------------------------------------------------------ state
    def _new_state(self, history: np.ndarray) -> UserState:
        rec = self.rec
        history = np.asarray(history, dtype=np.int64)
        seen = _append_seen(np.zeros(0, dtype=np.int32), history, self.max_seen)
        if self.streaming:
            m = rec.model
            with torch.no_grad():
                st = m.init_state(batch_size=1, device=rec.device)
                if len(history):
                    x = torch.from_numpy(rec.window(history)[None]).to(rec.device)
                    st = m.prefill(st, x)
            # the streaming state summarises every event after the seed window
            return UserState(None, st, seen, len(history), max(0, len(history) - rec.max_len))
        return UserState(rec.window(history), None, seen, len(history),
                         max(0, len(history) - rec.max_len))

    def get(self, user: str) -> UserState | None:
        st = self.users.get(user)
        if st is not None:
            self.users.move_to_end(user)
        return st

    def get_or_create(self, user: str) -> UserState:
        st = self.get(user)
        if st is None:
            hist = np.zeros(0, dtype=np.int64)
            if self.seed_from_dataset and user in self.rec.user_index:
                hist = self.rec.user_history(user)
            st = self._new_state(hist)
            self.users[user] = st
            while len(self.users) > self.max_users:
                self.users.popitem(last=False)
                self.evicted += 1
        return st

    def delete(self, user: str) -> bool:
        return self.users.pop(user, None) is not None

    def add_event(self, user: str, item: int) -> UserState:
        st = self.get_or_create(user)
        if self.streaming:
            with torch.no_grad():
                st.stream = self.rec.model.update(st.stream, torch.tensor([item], device=self.rec.device))
        else:
            st.window[:-1] = st.window[1:]
            st.window[-1] = item
        st.seen = _append_seen(st.seen, np.array([item]), self.max_seen)
        st.n_events += 1
        if not self.streaming:
            st.truncated = max(0, st.n_events - self.rec.max_len)
        return st

    # ------------------------------------------------------------------ answers
    def recommend(self, st: UserState, k: int, exclude_history: bool = True):
        """``(items, fallback)`` for a held user (popularity when nothing is held yet)."""
        rec = self.rec
        k = rec.check_k(k)
        exclude = [st.seen.astype(np.int64)] if exclude_history else None
        if st.n_events == 0:
            return rec.finish(rec.popularity[None].clone(), k, exclude)[0], "popularity"
        if not self.streaming:
            return rec.finish(rec.score_windows(st.window[None]), k, exclude)[0], None
        mask = torch.zeros(1, rec.n_items + 1, dtype=torch.bool, device=rec.device)
        mask[0, 0] = True
        if exclude is not None:
            mask[0, torch.from_numpy(exclude[0]).to(rec.device)] = True
        with rec.lock, torch.no_grad():
            scores, ids = rec.model.recommend_from(st.stream, k, exclude=mask)
        out = [(rec.item_raw[int(i)], float(s)) for s, i in zip(scores[0].tolist(), ids[0].tolist())
               if s != float("-inf") and int(i) != 0]
        return out, None

    def nbytes(self, st: UserState) -> int:
        """Bytes held for one user (arrays / model state + a fixed Python-object overhead)."""
        held = st.seen.nbytes + 480  # measured: dataclass, dict entry, key, array headers
        if self.streaming:
            held += int(self.rec.model.state_nbytes(st.stream))
        else:
            held += st.window.nbytes
        return held


def _append_seen(seen: np.ndarray, items: np.ndarray, cap: int) -> np.ndarray:
    """Unique items, most recent last; an item seen again moves to the end; at most ``cap``."""
    if not len(items):
        return seen
    # last occurrence order over seen + items
    allv = np.concatenate([seen.astype(np.int64), items.astype(np.int64)])
    rev = allv[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    order = np.sort(len(allv) - 1 - first_in_rev)  # positions of last occurrences, in order
    out = allv[order][-cap:]
    return out.astype(np.int32)
