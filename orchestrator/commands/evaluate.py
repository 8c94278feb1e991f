"""`clickmask evaluate`: run predictors through the NoC protocol on the same dataset folders, side by side.

    clickmask evaluate --model grabcut --model base:flip --data DATASET_DIR [--every N] [--limit N] [--out DIR]

A model SPEC is `grabcut`, `base` (the bundled model) or a checkpoint path, optionally followed by `:flip` (flip
averaging), `:nozoom` (no zoom-in) and/or `:onescale` (the first click seen at one scale only, not also coarser).
For each dataset: one table on stdout (rows = methods), and in --out `<dataset>.json` (every method's summary, mean
IoU curve and per-object results) and `<dataset>.png` (mean IoU against the number of clicks, one line per method).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

# Each suffix of a model spec overrides one of the learned predictor's settings (predictor.PredictorConfig).
SUFFIXES = {"flip": {"flip": True}, "nozoom": {"zoom_in": False}, "onescale": {"first_click_coarse_side": 0}}
COLUMNS = ["NoC@85", "NoC@90", "NoF@85", "NoF@90", "mIoU@1", "mIoU@3", "mIoU@5", "s/click", "first-click s",
           "cpu s/click"]


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="NoC evaluation of one or more models on dataset folders",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="grabcut | base | CHECKPOINT, with optional :flip, :nozoom, :onescale (repeatable)")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder with images/ and masks/ (repeatable)")
    p.add_argument("--every", type=int, default=1, help="take every Nth image (default 1: all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images (after --every)")
    p.add_argument("--max-clicks", type=int, default=20, help="clicks per object (default 20)")
    p.add_argument("--out", default=None,
                   help="folder for the JSON and PNG results (default: clickmask-eval in the temp folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def parse_spec(spec: str) -> tuple[str, dict]:
    """'base:flip:nozoom' -> ('base', {'flip': True, 'zoom_in': False}): the model and the predictor settings its
    suffixes override. Suffixes are peeled from the right, so a checkpoint path may hold a colon."""
    base, overrides = spec, {}
    while ":" in base and base.rsplit(":", 1)[1] in SUFFIXES:
        base, suffix = base.rsplit(":", 1)
        overrides.update(SUFFIXES[suffix])
    return base, overrides


def make_predictor(spec: str):
    base, overrides = parse_spec(spec)
    if base == "grabcut":
        if overrides:
            raise SystemExit(f"{spec}: GrabCut has no :{' :'.join(SUFFIXES)} variant")
        from workers.model.grabcut import GrabCutPredictor

        return GrabCutPredictor()
    # The learned predictor is imported only when asked for, so GrabCut runs without it.
    from workers.model.predictor import load_predictor

    return load_predictor(base, **overrides)


def dataset_name(path: str) -> str:
    """'.../eval/grabcut33' -> 'eval_grabcut33' (the last two folder names), for output file names."""
    parts = Path(path).resolve().parts[-2:]
    return "_".join(parts)


def format_table(summaries: list[dict]) -> str:
    """One row per method; NoC and mIoU to 2-3 decimals, seconds to 3."""
    def cell(col: str, v) -> str:
        if isinstance(v, int):
            return str(v)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3f}" if col.startswith(("mIoU", "s/", "first", "cpu")) else f"{v:.2f}"

    rows = [["method", "objects"] + COLUMNS]
    rows += [[s["method"], str(s["objects"])] + [cell(c, s[c]) for c in COLUMNS] for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        curve = r.miou()
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=r.method)
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU")
    ax.set_title(title)
    ax.set_xticks(range(1, results[0].max_clicks + 1, 2 if results[0].max_clicks > 10 else 1))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    import cv2
    import torch

    from workers.model.evaluator import evaluate

    # Speed is part of the table: one thread, as each serving replica runs.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "clickmask-eval"
    out.mkdir(parents=True, exist_ok=True)
    predictors = [(spec, make_predictor(spec)) for spec in args.model]
    for data in args.data:
        name = dataset_name(data)
        results = [evaluate(p, data, method=spec, max_clicks=args.max_clicks, every=args.every, limit=args.limit,
                            progress=not args.no_progress) for spec, p in predictors]
        print(f"\n{data} (every {args.every}, limit {args.limit}, {args.max_clicks} clicks)")
        print(format_table([r.summary() for r in results]))
        doc = {"data": str(data), "every": args.every, "limit": args.limit, "max_clicks": args.max_clicks,
               "results": [r.to_dict() for r in results]}
        (out / f"{name}.json").write_text(json.dumps(doc))
        plot(results, out / f"{name}.png", f"{name} (every {args.every})")
        print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0
