"""A trainer's resumable state: one file, replaced atomically, valid for one fingerprint of what training depends on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel

from aifeedback.errors import InputError


def fingerprint(cfg: BaseModel, kept: list[dict], gold_rows: list[dict] | None) -> str:
    """What a training state depends on: the config (less checkpoint_every), the training rows as trained on, the gold rows."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(exclude={"checkpoint_every"}), sort_keys=True).encode())
    for rows in (kept, gold_rows or []):
        h.update(json.dumps(rows, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


class Checkpoint:
    """One training state in ``folder/state.pt``, replaced atomically, for one fingerprint."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.path = folder / "state.pt"

    def load(self) -> dict | None:
        import torch

        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.key:
            raise InputError(f"the checkpoint {self.path} was written for other training pairs or another reward config: rerun with those, or delete {self.folder} to start over")
        return state

    def save(self, state: dict) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("state.pt.tmp")
        torch.save({**state, "fingerprint": self.key}, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
