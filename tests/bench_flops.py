"""Compute per click (not a test; pytest does not collect bench_*.py): the bundled model's FLOPs per click at the
predictor's own input sizes, and where a click's time goes on this CPU (the network's forward pass against the
rest of the predictor: guidance maps, cropping, pasting the mask back at full size, keeping the clicked parts).

Clicks: the NoC clicker's on davis345 (854x480), every --every-th image, --clicks per object, the base model's
answers fed back, as an annotator's requests would arrive. FLOPs by torch.utils.flop_counter on the network at each
click's input (convolutions and matrix products; a multiply-add counts 2); times are CPU time of this process (so
other work on the machine does not inflate them) with one torch thread, the predictor's bfloat16 setting as shipped.

Run: nice -n 10 .venv/bin/python tests/bench_flops.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_serving import DAVIS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DAVIS)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--clicks", type=int, default=5)
    args = p.parse_args(argv)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from workers.model.datasets import read_ignore, read_image, read_mask, scan
    from workers.model.evaluator import evaluate_object
    from workers.model.predictor import load_predictor

    torch.set_num_threads(1)
    predictor = load_predictor("base")
    net = predictor.net
    forward_s: list[float] = []
    flops_by_shape: dict[tuple, int] = {}
    shapes: Counter = Counter()
    counting = {"on": False}

    def timed_forward(image, guidance, _forward=net.forward):
        shape = tuple(image.shape[-2:])
        shapes[shape] += 1
        if counting["on"] and shape not in flops_by_shape:
            with FlopCounterMode(display=False) as counter:
                _forward(image, guidance)
            flops_by_shape[shape] = counter.get_total_flops()
        t0 = time.process_time()
        out = _forward(image, guidance)
        forward_s.append(time.process_time() - t0)
        return out

    net.forward = timed_forward
    entries = [e for e in scan(args.data) if e.mask_paths][::args.every]
    predict_s: list[float] = []
    counting["on"] = True
    for entry in entries:
        predictor.set_image(read_image(entry.image_path))
        for mask_path in entry.mask_paths[:1]:
            _, _, _, cpu = evaluate_object(predictor, read_mask(mask_path), read_ignore(mask_path), args.clicks)
            predict_s.extend(cpu)
    # The flop count ran once per shape outside the timed call; time only the timed calls.
    clicks = len(forward_s)
    flops = [flops_by_shape[s] for s, n in shapes.items() for _ in range(n)]
    params = sum(t.numel() for t in net.parameters())
    print(f"clickmask compute per click, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, "
          f"{len(entries)} images, {clicks} clicks, {params / 1e6:.2f} M parameters")
    for shape, n in shapes.most_common():
        print(f"  network input {shape[1]}x{shape[0]} (w x h): {n} clicks, {flops_by_shape[shape] / 1e9:.2f} GFLOP")
    print(f"  GFLOP per click: mean {statistics.fmean(flops) / 1e9:.2f}, max {max(flops) / 1e9:.2f}")
    fwd_ms = [s * 1000 for s in forward_s]
    all_ms = [s * 1000 for s in predict_s]
    print(f"  network forward, CPU time, 1 thread: median {statistics.median(fwd_ms):.1f} ms, p95 "
          f"{np.percentile(fwd_ms, 95):.1f} ms")
    print(f"  whole predict, CPU time (the evaluator's per click): median {statistics.median(all_ms):.1f} ms, p95 "
          f"{np.percentile(all_ms, 95):.1f} ms")
    print(f"  the rest of a click (median whole - median forward): "
          f"{statistics.median(all_ms) - statistics.median(fwd_ms):.1f} ms")
    print(f"  achieved on this CPU: {statistics.fmean(flops) / 1e9 / (statistics.median(fwd_ms) / 1000):.1f} GFLOP/s "
          f"in the forward pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
