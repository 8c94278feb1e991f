"""`clickmask bench`: benchmarks that report medians and 95th percentiles over many runs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (per-click latency of the model)")
    bsub = p.add_subparsers(dest="bench", required=True)
    m = bsub.add_parser("model", help="per-click latency of a predictor, 1 torch thread, no HTTP")
    m.add_argument("--model", default="base", help="base, grabcut or a checkpoint path, with :flip, :nozoom, :onescale")
    m.add_argument("--data", required=True, type=Path, help="dataset folder, e.g. shared/datasets/eval/davis345")
    m.add_argument("--every", type=int, default=5, help="take every Nth image")
    m.add_argument("--clicks", type=int, default=5, help="clicks per object")
    m.add_argument("--repeats", type=int, default=1)
    m.add_argument("--json", type=Path, help="also write the figures here")
    m.set_defaults(handler=run_model)


def run_model(args: argparse.Namespace) -> int:
    import torch

    from orchestrator.commands.evaluate import make_predictor
    from workers.model.benchmark import click_latency

    torch.set_num_threads(1)
    predictor = make_predictor(args.model)
    figures = click_latency(predictor, args.data, every=args.every, clicks_per_object=args.clicks,
                            repeats=args.repeats)
    figures["model"] = args.model
    for key in ("all", "first_click", "later_clicks", "set_image"):
        f = figures[key]
        print(f"{key:13s} n={f['n']:5d}  p50 {f['p50_ms']:7.1f} ms  p95 {f['p95_ms']:7.1f} ms  "
              f"max {f['max_ms']:7.1f} ms")
    ratio = figures["first_click"]["p50_ms"] / figures["all"]["p50_ms"]
    print(f"first click p50 / all clicks p50 = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0
