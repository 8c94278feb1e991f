"""The training loop, shared by base training and fine-tuning: simulated clicks, iterative training, NFL loss.

Each batch: initial clicks from the sampler, then 0-3 passes of the network without gradients, each adding a
corrective click on the largest error and feeding the prediction back as the previous mask; the loss is on the
final pass only. Samples come from a generator running in worker processes so the network never waits for data.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from .checkpoint import build_net, load_checkpoint, save_checkpoint
from .data import Sample, SampleGenerator
from .guidance import colour_bins, guidance_maps
from .loss import normalized_focal_loss
from .network import ClickSegNet, NetConfig, grow
from .predictor import PredictorConfig, to_tensors
from .sampler import corrective_click


@dataclass
class TrainConfig:
    samples: int = 200_000  # length of the learning-rate schedule, in samples
    batch_size: int = 8
    size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_samples: int = 2_000
    max_corrective_clicks: int = 3
    threads: int = 1
    bf16: bool = True  # bfloat16 autocast: about 1.7x faster steps on CPUs with AVX512-BF16, weights stay fp32
    data_workers: int = 1
    seed: int = 0
    checkpoint_every_s: float = 300.0
    # Share of batches trained as a first click exactly as served: one positive click, no previous mask, no
    # corrective pass. Random initial clicks alone make that case rare (about 7 % of batches).
    first_click_share: float = 0.0
    first_click_data: dict = field(default_factory=dict)  # training folder -> first-click weight (empty: as data)
    device: str = "cpu"  # a torch device: "cpu", "cuda"
    stop_after_s: float = 0.0  # end this run (with a checkpoint) after so many seconds, whatever the schedule says
    data: dict = field(default_factory=dict)  # training folder -> sampling weight, recorded for the model card
    net: dict = field(default_factory=lambda: NetConfig().to_dict())
    grow_to: dict = field(default_factory=dict)  # with init: NetConfig fields to grow the net to (network.grow)
    predictor: dict = field(default_factory=lambda: PredictorConfig().to_dict())


class _Batches(IterableDataset):
    """Endless batches, each drawn whole by a data worker: (first_click, samples). A first-click batch (a share of
    them) is drawn with the generator's first-click weights and trained as a served first click."""

    def __init__(self, generator: SampleGenerator, cfg: TrainConfig, seed: int):
        self.generator, self.cfg, self.seed = generator, cfg, seed

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id, int(time.time())])
        while True:
            first = rng.random() < self.cfg.first_click_share
            yield first, [self.generator.sample(rng, first) for _ in range(self.cfg.batch_size)]


def _as_drawn(batch):
    return batch  # torch's default would turn the samples' arrays into tensors


def _lr_factor(seen: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then a cosine to 2 % that ends with the schedule's samples or, for a run with a time limit,
    with its time if that comes first (a burst on a lent GPU ends annealed, not mid-schedule)."""
    if seen < cfg.warmup_samples:
        return max(seen / cfg.warmup_samples, 0.01)
    t = min(1.0, (seen - cfg.warmup_samples) / max(1, cfg.samples - cfg.warmup_samples))
    if cfg.stop_after_s:
        t = max(t, min(1.0, elapsed_s / cfg.stop_after_s))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def _forward(net: ClickSegNet, batch: list[Sample], bins: list[np.ndarray], prev: list[np.ndarray | None],
             bf16: bool) -> torch.Tensor:
    rgb = np.stack([s.rgb for s in batch])
    guidance = np.stack([guidance_maps(s.rgb, s.clicks, p, b) for s, p, b in zip(batch, prev, bins)])
    device = next(net.parameters()).device
    inputs = [t.to(device, non_blocking=True) for t in to_tensors(rgb, guidance)]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return net(*inputs).float()


def train_step(net, optimizer, batch: list[Sample], rng: np.random.Generator, cfg: TrainConfig,
               first_click: bool = False) -> float:
    """One iterative-training step on a batch; returns the loss. Clicks are appended to the samples in place.
    `first_click`: train the batch as a served first click (one positive click, no previous mask)."""
    bins = [colour_bins(s.rgb) for s in batch]
    prev: list[np.ndarray | None] = [None] * len(batch)
    if first_click:
        for s in batch:
            del s.clicks[1:]  # the sampler's first click is always positive
        n_extra = 0
    else:
        n_extra = int(rng.integers(cfg.max_corrective_clicks + 1))
    if n_extra:
        net.eval()
        with torch.no_grad():
            for _ in range(n_extra):
                probs = torch.sigmoid(_forward(net, batch, bins, prev, cfg.bf16))[:, 0].cpu().numpy()
                for i, s in enumerate(batch):
                    prev[i] = probs[i]
                    click = corrective_click(rng, probs[i] > 0.49, s.target)
                    if click is not None:
                        s.clicks.append(click)
    net.train()
    logits = _forward(net, batch, bins, prev, cfg.bf16)
    target = torch.from_numpy(np.stack([s.target for s in batch])[:, None].astype(np.float32)).to(logits.device)
    loss = normalized_focal_loss(logits, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train(
    generator: SampleGenerator,
    out: str | Path,
    cfg: TrainConfig,
    init: str | Path | None = None,
    resume: bool = False,
    on_checkpoint: Callable[[Path, dict], dict | None] | None = None,
    progress: bool = True,
) -> dict:
    """Train and write checkpoints to `out` (the latest) every cfg.checkpoint_every_s and at the end.

    `init`: start from these weights (fine-tuning, or continuing); with `resume` the schedule position and the
    optimizer state saved in `init` are taken over too. `on_checkpoint(path, train_state)` may return metrics,
    stored in the checkpoint. Returns the final train state.

    The state's `lineage` lists the earlier runs whose weights this one started from (samples, hours, data), so
    the training behind a checkpoint adds up across runs that each start from the last one's weights.
    """
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    payload = load_checkpoint(init) if init else None
    net = build_net(payload) if payload else ClickSegNet(NetConfig.from_dict(cfg.net))
    target = NetConfig.from_dict({**net.config.to_dict(), **cfg.grow_to})
    if target != net.config:
        if payload and resume:
            raise ValueError("grow a net when starting from its weights (init), not when resuming a schedule")
        net = grow(net, target)
    net = net.to(cfg.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"samples_seen": 0, "wall_time_s": 0.0, "steps": 0, "lineage": []}
    prior = payload.get("train", {}) if payload else {}
    if payload and resume:
        state.update({k: prior.get(k, v) for k, v in state.items()})
        if "optimizer" in payload:
            optimizer.load_state_dict(payload["optimizer"])
    elif prior.get("samples_seen"):
        state["lineage"] = [*prior.get("lineage", []), run_summary(prior)]
    rng = np.random.default_rng([cfg.seed, state["steps"]])
    loader = DataLoader(_Batches(generator, cfg, cfg.seed + state["steps"]), batch_size=None,
                        num_workers=cfg.data_workers, collate_fn=_as_drawn,
                        persistent_workers=cfg.data_workers > 0, prefetch_factor=4 if cfg.data_workers else None)

    def checkpoint() -> None:
        fields = {"train": {**state, "config": asdict(cfg)}, "predictor": cfg.predictor,
                  "optimizer": optimizer.state_dict()}
        save_checkpoint(out, net, **fields)
        metrics = on_checkpoint(out, dict(state)) if on_checkpoint else None
        if metrics:
            save_checkpoint(out, net, **fields, metrics=metrics)

    bar = tqdm(total=cfg.samples, initial=state["samples_seen"], unit="sample", disable=not progress,
               dynamic_ncols=True)
    losses: list[float] = []
    t_start, t_ckpt = time.perf_counter(), time.perf_counter()
    wall0, seen0 = state["wall_time_s"], state["samples_seen"]
    for first_click, batch in loader:
        if state["samples_seen"] >= cfg.samples:
            break
        if cfg.stop_after_s and time.perf_counter() - t_start > cfg.stop_after_s:
            break
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(state["samples_seen"], cfg, time.perf_counter() - t_start)
        losses.append(train_step(net, optimizer, batch, rng, cfg, first_click))
        state["samples_seen"] += len(batch)
        state["steps"] += 1
        state["wall_time_s"] = wall0 + time.perf_counter() - t_start
        state["loss"] = float(np.mean(losses[-50:]))
        state["samples_per_s"] = (state["samples_seen"] - seen0) / max(1e-6, state["wall_time_s"] - wall0)
        bar.update(len(batch))
        bar.set_postfix(loss=f"{state['loss']:.4f}", sps=f"{state['samples_per_s']:.1f}")
        if time.perf_counter() - t_ckpt > cfg.checkpoint_every_s:
            checkpoint()
            t_ckpt = time.perf_counter()
    bar.close()
    checkpoint()
    return state


def run_summary(train_state: dict) -> dict:
    """One run of a checkpoint's training, as its lineage records it."""
    config = train_state.get("config", {})
    return {"samples": train_state.get("samples_seen", 0), "hours": round(train_state.get("wall_time_s", 0) / 3600, 3),
            "lr": config.get("lr"), "data": config.get("data", {}), "device": config.get("device", "cpu"),
            "first_click_share": config.get("first_click_share", 0.0),
            "first_click_data": config.get("first_click_data") or config.get("data", {})}


def lineage_totals(train_state: dict) -> dict:
    """Samples and hours of training behind a checkpoint: its own run plus every run in its lineage."""
    runs = [*train_state.get("lineage", []), run_summary(train_state)]
    return {"runs": len(runs), "samples": sum(r["samples"] for r in runs),
            "hours": round(sum(r["hours"] for r in runs), 2)}

