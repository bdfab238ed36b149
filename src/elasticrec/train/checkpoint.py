"""Checkpoints that are atomic, checksummed and never execute code when loaded.

Layout inside ``<run>/checkpoints/``::

    epoch-0007.safetensors   model weights (safetensors)
    epoch-0007.state.pt      optimizer / scheduler / counters (loaded with weights_only=True)
    last.json                {"epoch": 7, "files": {name: sha256}}  <- written last, atomically
    best.safetensors, best.json

A checkpoint exists only once its manifest names it; a truncated or corrupted file fails its
checksum and raises :class:`CheckpointError` instead of being loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from elasticrec.utils import atomic_save, atomic_write_json, file_digest


class CheckpointError(RuntimeError):
    pass


def save_weights(model, path: Path) -> str:
    """Model weights as safetensors (tied/shared tensors stored once); returns the sha256."""
    atomic_save(path, lambda tmp: save_model(model, str(tmp)))
    return file_digest(path)


def save_checkpoint(ckpt_dir: Path, epoch: int, model, state: dict) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    files = {f"{stem}.safetensors": save_weights(model, ckpt_dir / f"{stem}.safetensors")}
    atomic_save(ckpt_dir / f"{stem}.state.pt", lambda tmp: torch.save(state, tmp))
    files[f"{stem}.state.pt"] = file_digest(ckpt_dir / f"{stem}.state.pt")
    atomic_write_json(ckpt_dir / "last.json", {"epoch": epoch, "files": files})
    # drop older checkpoints only after the new manifest is in place, and the temporaries
    # (.<name>.*.tmp, see utils.atomic_path) of a writer killed mid-write: this process writes
    # one file at a time, so none of them is in use
    for p in ckpt_dir.glob("epoch-*"):
        if not p.name.startswith(stem + "."):
            p.unlink(missing_ok=True)
    for p in ckpt_dir.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def _verify(ckpt_dir: Path, manifest: str) -> dict:
    mpath = ckpt_dir / manifest
    try:
        meta = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: no checkpoint manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: corrupted manifest ({e})") from None
    for name, digest in meta["files"].items():
        p = ckpt_dir / name
        if not p.exists():
            raise CheckpointError(f"{p}: missing (named by {mpath.name})")
        if file_digest(p) != digest:
            raise CheckpointError(f"{p}: checksum mismatch, file truncated or corrupted; not loading it")
    return meta


def load_checkpoint(ckpt_dir: Path, model, map_location="cpu") -> tuple[int, dict]:
    meta = _verify(ckpt_dir, "last.json")
    names = list(meta["files"])
    w = next(n for n in names if n.endswith(".safetensors"))
    s = next(n for n in names if n.endswith(".state.pt"))
    load_model(model, str(ckpt_dir / w), device=str(map_location))
    state = torch.load(ckpt_dir / s, map_location=map_location, weights_only=True)
    return int(meta["epoch"]), state


def save_best(ckpt_dir: Path, model, info: dict) -> None:
    digest = save_weights(model, ckpt_dir / "best.safetensors")
    atomic_write_json(ckpt_dir / "best.json", {**info, "files": {"best.safetensors": digest}})


def load_best(ckpt_dir: Path, model, map_location="cpu") -> dict:
    meta = _verify(ckpt_dir, "best.json")
    load_model(model, str(ckpt_dir / "best.safetensors"), device=str(map_location))
    return meta


def load_last_weights(ckpt_dir: Path, model, map_location="cpu") -> dict:
    """Load the weights of the latest checkpoint (``last.json``), not the best-validation ones.
    Returns ``{"epoch": E, "epochs_trained": N}`` (E = the epoch that checkpoint ended,
    0-based; N = whole epochs done) plus ``"partial_epoch": True`` when a budget stopped it
    mid-epoch."""
    epoch, state = load_checkpoint(ckpt_dir, model, map_location)   # verified once, there
    info = {"epoch": epoch, "epochs_trained": int(state["epoch"])}
    return {**info, "partial_epoch": True} if state.get("batch") else info
