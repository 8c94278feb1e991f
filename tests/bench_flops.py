"""Compute per click (not a test; pytest does not collect bench_*.py): the bundled model's FLOPs per click at the
predictor's own input sizes, and where a click's time goes on this CPU (the network's forward pass against the
rest of the predictor: guidance maps, cropping, pasting the mask back at full size, keeping the clicked parts), and
the ingress's own work on each answer: the brush RLE Label Studio gets and the COCO RLE the recorder stores.

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


def ingress_work(masks: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """CPU ms per mask of the two encodings the ingress makes of every answer."""
    from integrations.label_studio import protocol
    from integrations.label_studio.labeling_config import parse_label_config
    from ls_support import STANDARD_CONFIG
    from integrations.masks import encode

    config = parse_label_config(STANDARD_CONFIG)
    brush, coco = [], []
    for mask in masks:
        t0 = time.process_time()
        protocol.brush_result(mask, config.answer_for("Object"), 0.9)
        t1 = time.process_time()
        encode(mask)
        t2 = time.process_time()
        brush.append((t1 - t0) * 1000)
        coco.append((t2 - t1) * 1000)
    return brush, coco


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
    predict = predictor.predict
    answers: list[np.ndarray] = []

    def keep_answer(*a, **k):
        out = predict(*a, **k)
        answers.append(out.mask)
        return out

    predictor.predict = keep_answer
    entries = [e for e in scan(args.data) if e.mask_paths][::args.every]
    predict_s: list[float] = []
    # Warm-up, not counted: the first calls of torch and the encoders pay one-time costs.
    predictor.set_image(read_image(entries[0].image_path))
    evaluate_object(predictor, read_mask(entries[0].mask_paths[0]), None, 2)
    ingress_work(answers)
    # Two passes over the same clicks: FLOPs counted in the first, times taken in the second (counting is slow).
    for counting["on"] in (True, False):
        forward_s.clear(), shapes.clear(), answers.clear(), predict_s.clear()
        for entry in entries:
            predictor.set_image(read_image(entry.image_path))
            for mask_path in entry.mask_paths[:1]:
                _, _, _, cpu = evaluate_object(predictor, read_mask(mask_path), read_ignore(mask_path), args.clicks)
                predict_s.extend(cpu)
    brush_ms, coco_ms = ingress_work(answers)
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
    print(f"  ingress per answer, CPU time: brush RLE median {statistics.median(brush_ms):.1f} ms, p95 "
          f"{np.percentile(brush_ms, 95):.1f} ms; COCO RLE median {statistics.median(coco_ms):.2f} ms, p95 "
          f"{np.percentile(coco_ms, 95):.2f} ms")
    print(f"  achieved on this CPU: {statistics.fmean(flops) / 1e9 / (statistics.median(fwd_ms) / 1000):.1f} GFLOP/s "
          f"in the forward pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
