"""Position-wise feed-forward and positional encodings shared by all models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


GATE_BIAS = 1.2785  # initial bias of an output gate: SiLU(1.2785) = 1.000, so it starts near the identity
NORM_EPS = 1e-6     # epsilon of the output norm (HSTU's)


def gated_output(y: torch.Tensor, x: torch.Tensor, gate: nn.Linear | None, norm: bool) -> torch.Tensor:
    """HSTU's treatment of a merged-head attention output ``y`` [..., D] before ``W_o``:
    layer-normalised without affine when ``norm`` (HSTU's ``Norm(A V)``), then multiplied by
    ``SiLU(W_u x + b_u)`` of the query positions' inputs ``x`` when a ``gate`` is given (HSTU's ``U``)."""
    if norm:
        y = F.layer_norm(y, y.shape[-1:], eps=NORM_EPS)
    if gate is not None:
        y = y * F.silu(gate(x)).to(y.dtype)
    return y


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LearnedPositions(nn.Module):
    """Absolute positions counted back from the end of the window, so left padding never shifts
    the position of the most recent item (position max_len-1 is always the last item)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(max_len, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the model's max_len {self.max_len}")
        idx = torch.arange(self.max_len - L, self.max_len, device=x.device)
        return x + self.emb(idx)[None]


def first_valid_index(valid: torch.Tensor) -> torch.Tensor:
    """Index of the first True of each row of valid [B, L] (L for a row without any)."""
    B, L = valid.shape
    if L == 0:
        return torch.zeros(B, dtype=torch.long, device=valid.device)
    pos = torch.arange(L, device=valid.device).expand(B, L)
    return torch.where(valid, pos, L).amin(dim=1)


def residual_at(x: torch.Tensor, rows: torch.Tensor | None, fn) -> torch.Tensor:
    """``x + fn(x)`` on the rows selected by the bool mask ``rows`` (leading dims of ``x``); other
    rows are returned unchanged and ``fn`` never sees them. ``rows=None``: every row."""
    if rows is None:
        return x + fn(x)
    idx = rows.nonzero(as_tuple=True)
    sel = x[idx]
    return x.index_put(idx, sel + fn(sel))


class StartPositions(nn.Module):
    """Learned absolute positions counted from each row's FIRST valid item (``learned-start``).

    The first item of the window gets position 0, the next 1, ...; positions from ``max_len - 1``
    on share the last embedding (clamped), so any length works and a new event never changes the
    position of an earlier one (streaming-compatible). Note: a window cut from a longer history
    counts from the window's first item, a streamed history from the user's first event.
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = max_len
        self.emb = nn.Embedding(max_len, d_model)

    def index(self, count: torch.Tensor) -> torch.Tensor:
        """Position index of the item preceded by ``count`` items (any shape)."""
        return count.clamp(0, self.max_len - 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None, :] - first_valid_index(valid)[:, None]
        return x + self.emb(self.index(t))

    def at(self, count: torch.Tensor) -> torch.Tensor:
        """Embedding [B, D] of the next item of rows that have seen ``count`` [B] items."""
        return self.emb(self.index(count))


class ChunkPositions(nn.Module):
    """Learned position WITHIN the chunk (0..C-1) (``chunk``): works at any length.

    ``align="start"``: slots counted from each row's first valid item (streaming-compatible);
    ``align="end"``: the chunk grid ends at the last position of the window (as in
    chunk-causal attention with end alignment).
    """

    def __init__(self, chunk_size: int, d_model: int, align: str = "start"):
        super().__init__()
        if align not in ("start", "end"):
            raise ValueError(f"align must be 'start' or 'end', got {align!r}")
        self.C, self.align = chunk_size, align
        self.emb = nn.Embedding(chunk_size, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        t = torch.arange(L, device=x.device)[None, :]
        if self.align == "start":
            t = (t - first_valid_index(valid)[:, None]).clamp(min=0)
        else:
            t = t + (-L) % self.C
        return x + self.emb(t % self.C)

    def at(self, count: torch.Tensor) -> torch.Tensor:
        """Embedding [B, D] of the next item of rows that have seen ``count`` [B] items (start)."""
        return self.emb(count % self.C)


def rotary_tables(L: int, dim: int, device, base: float = 10000.0):
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    t = torch.arange(L, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x [..., L, dim] by position (RoPE)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def toeplitz_lower(per_distance: torch.Tensor) -> torch.Tensor:
    """[..., L] values per distance d = t - s  ->  [..., L, L] with entry (t, s) = value[t - s] for
    s <= t and 0 above the diagonal.

    Built from overlapping windows (``unfold``) of one padded vector, whose backward sums each
    diagonal with a dedicated kernel. Indexing the bucket table with an [L, L] bucket matrix
    instead makes a backward of L^2 accumulating writes into a few hundred entries, which CUDA's
    indexing backward serialises per entry (see ``hstu_attention.bucket_lookup``). Used by HSTU's
    relative-position bias and by the local-chunk position bias of dispatcher attention."""
    L = per_distance.shape[-1]
    padded = torch.cat([per_distance.flip(-1), per_distance.new_zeros(*per_distance.shape[:-1], L - 1)], -1)
    return padded.unfold(-1, L, 1).flip(-2)  # window i = padded[i : i + L] is row L - 1 - i
