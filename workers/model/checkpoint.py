"""Checkpoints: the network's config and weights, with the predictor settings, training state and metrics.

A checkpoint is a torch file holding a plain dict (loaded with weights_only=True, so a checkpoint cannot run code):
  format: "clickmask/1"; net: NetConfig as a dict; state_dict: weights; predictor: PredictorConfig as a dict;
  train: {samples_seen, wall_time_s, config, ...}; metrics: whatever evaluation was recorded; optimizer: optional.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .network import ClickSegNet, NetConfig

FORMAT = "clickmask/1"
BASE_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "base.pt"


def save_checkpoint(path: str | Path, net: ClickSegNet, **fields) -> None:
    """Write atomically (a crash mid-write never leaves a truncated checkpoint behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "net": net.config.to_dict(), "state_dict": state, **fields}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a clickmask checkpoint")
    return payload


def build_net(payload: dict) -> ClickSegNet:
    net = ClickSegNet(NetConfig.from_dict(payload["net"]))
    net.load_state_dict(payload["state_dict"])
    return net


def release_checkpoint(src: str | Path, dst: str | Path = BASE_CHECKPOINT, metrics: dict | None = None) -> dict:
    """Copy a training checkpoint without its optimizer state (a third of the size), for shipping or serving;
    `metrics`, when given, replace the stored ones. Returns the copied training state."""
    payload = load_checkpoint(src)
    payload.pop("optimizer", None)
    if metrics is not None:
        payload["metrics"] = metrics
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, dst)
    return payload.get("train", {})
