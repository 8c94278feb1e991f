"""`clickmask train`: train the click model from scratch or from a checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path


def counts(text: str) -> tuple[int, ...]:
    """'1,2,4,3' -> (1, 2, 4, 3), for --deepen and --widen."""
    try:
        numbers = tuple(int(b) for b in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers such as 1,2,4,3, got {text!r}")
    return numbers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the click model (from scratch, or from a checkpoint)",
                       description="Train on dataset folders in the shared layout (images/, masks/). Writes the "
                                   "latest checkpoint to --out every few minutes and at the end; Ctrl-C is safe.")
    p.add_argument("--data", action="append", required=True, metavar="DIR", help="training folder (repeatable)")
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="sampling weight of each --data folder, in order (default: equal)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (schedule position and optimizer state)")
    p.add_argument("--samples", type=int, default=120_000, help="length of the schedule in samples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=256, help="side of the square training frames")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", type=int, default=1, help="data worker processes")
    p.add_argument("--holdout-every", type=int, default=20,
                   help="leave every Nth image of each folder out of training, for validation with "
                        "`clickmask evaluate --every N` (0: none)")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--validate-images", type=int, default=5,
                   help="at each checkpoint, NoC on this many held-out images per folder, stored in the "
                        "checkpoint's metrics (0: no validation)")
    p.add_argument("--deepen", metavar="N,N,N,N", type=counts,
                   help="with --init: grow the net to this many residual blocks per stage, the new ones starting "
                        "as the identity (e.g. 1,2,4,3)")
    p.add_argument("--widen", metavar="W,W,W,W,W", type=counts,
                   help="with --init: grow the encoder to these channel widths (stem, then strides 4-32), the new "
                        "channels unseen by the old ones at first (e.g. 36,48,96,144,192)")
    p.add_argument("--decoder-width", metavar="W", type=int,
                   help="with --init: grow the decoder to this width")
    p.add_argument("--context-width", metavar="W", type=int,
                   help="with --init: add (or widen) the whole-frame context branch, W hidden channels; a new "
                        "branch starts adding nothing")
    p.add_argument("--best", type=Path, metavar="FILE",
                   help="keep a copy (weights and state, no optimizer) of the checkpoint with the best held-out "
                        "NoC@90 so far, judged at each checkpoint (needs --validate-images)")
    p.add_argument("--first-click-share", type=float, default=0.0, metavar="P",
                   help="share of batches trained as a served first click: one positive click, nothing else")
    p.add_argument("--first-click-weight", action="append", type=float, metavar="W",
                   help="sampling weight of each --data folder in first-click batches, in order (default: as "
                        "--weight); e.g. more weight on folders of whole objects, which a first click should "
                        "select whole")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop after this many minutes with a checkpoint, wherever the schedule is (0: run to its "
                        "end); --resume continues from there")
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)
    r = sub.add_parser("release", help="copy a training checkpoint without optimizer state (default: as the "
                                       "bundled base model)")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("--to", type=Path, help="destination (default: the bundled base model file)")
    r.add_argument("--reference", type=Path, metavar="DIR",
                   help="also evaluate the released model on a few images of this folder (in shared/datasets) "
                        "and write the figures beside it, for the regression test")
    r.add_argument("--every", type=int, default=4, help="with --reference: every Nth image")
    r.add_argument("--limit", type=int, default=3, help="with --reference: at most this many images")
    r.set_defaults(handler=release)
    b = sub.add_parser("bundle", help="pack training folders small enough to carry to a GPU machine",
                       description="Writes a zip of the folders in the shared layout, images shrunk and re-encoded "
                                   "(held-out images kept, under their own names, so the same ones stay held "
                                   "out). Unpack with `python3 -m zipfile -e BUNDLE DIR` and train on DIR/<folder>.")
    b.add_argument("--data", action="append", required=True, metavar="DIR", help="training folder (repeatable)")
    b.add_argument("--out", required=True, type=Path, help="zip file to write")
    b.add_argument("--max-side", type=int, default=256, help="longer side of the packed images, in pixels")
    b.add_argument("--quality", type=int, default=70, help="WebP quality of the packed images")
    b.add_argument("--max-mib", type=float, default=64.0, help="refuse to write a bundle larger than this")
    b.set_defaults(handler=bundle)


def holdout_metrics(checkpoint: Path, folders: list[str], every: int, images: int) -> dict:
    """NoC figures (10 clicks, to stay cheap) on the first held-out images of each training folder."""
    import torch

    from workers.model.evaluator import evaluate
    from workers.model.predictor import load_predictor

    threads = torch.get_num_threads()
    predictor = load_predictor(checkpoint)
    metrics = {}
    for folder in folders:
        s = evaluate(predictor, folder, every=every, limit=images, max_clicks=10, progress=False).summary()
        metrics[Path(folder).name] = {k: s[k] for k in ("objects", "NoC@85", "NoC@90", "mIoU@1", "mIoU@3", "mIoU@5")}
    torch.set_num_threads(threads)
    return {"holdout_10_clicks": metrics}


def holdout_score(metrics: dict | None) -> float:
    """The selection figure of held-out metrics: NoC@90 averaged over the training folders (lower is better)."""
    folders = (metrics or {}).get("holdout_10_clicks", {})
    return sum(f["NoC@90"] for f in folders.values()) / len(folders) if folders else float("inf")


class KeepBest:
    """At each checkpoint: validate, and copy the checkpoint to `best` when its held-out score beats the best so far
    (a `best` file left by an earlier run counts, so a resumed or restarted campaign never keeps a worse one)."""

    def __init__(self, validate, best: Path | None):
        self.validate, self.best = validate, best
        self.score = float("inf")
        if best is not None and best.is_file():
            from workers.model.checkpoint import load_checkpoint

            self.score = holdout_score(load_checkpoint(best).get("metrics"))

    def __call__(self, path: Path, state: dict) -> dict:
        metrics = self.validate(path, state)
        score = holdout_score(metrics)
        if self.best is not None and score < self.score:
            from workers.model.checkpoint import release_checkpoint

            release_checkpoint(path, self.best, metrics=metrics)
            self.score = score
            print(f"\nheld-out NoC@90 {score:.2f} at {state['samples_seen']} samples: the best so far, kept in "
                  f"{self.best}", flush=True)
        return metrics


def release(args: argparse.Namespace) -> int:
    from workers.model.checkpoint import BASE_CHECKPOINT, release_checkpoint

    dst = args.to or BASE_CHECKPOINT
    from workers.model.train import lineage_totals

    state = release_checkpoint(args.checkpoint, dst)
    total = lineage_totals(state)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB): {state.get('samples_seen', '?')} samples, "
          f"{state.get('wall_time_s', 0) / 3600:.2f} h of training; with the runs it started from: "
          f"{total['samples']} samples, {total['hours']} h in {total['runs']} runs")
    if args.reference:
        write_reference(dst, args.reference.resolve(), args.every, args.limit)
    return 0


def bundle(args: argparse.Namespace) -> int:
    from workers.model.bundle import pack_bundle

    try:
        summary = pack_bundle(args.data, args.out, args.max_side, args.quality, int(args.max_mib * 2**20))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    images = ", ".join(f"{name} {n}" for name, n in summary.folders.items())
    print(f"wrote {args.out} ({summary.bytes / 2**20:.1f} MiB): images {images}; {summary.masks} masks")
    return 0


def write_reference(checkpoint: Path, data: Path, every: int, limit: int) -> None:
    """Figures of `checkpoint` on a few images, in `<name>_regression.json` beside it. The data folder is stored
    relative to the folder that holds `datasets/`, so the test finds it from any checkout."""
    import json

    import torch

    from workers.model.evaluator import evaluate
    from workers.model.predictor import load_predictor

    if "datasets" not in data.parts:
        raise SystemExit(f"--reference must be a folder inside a datasets/ tree, not {data}")
    relative = Path(*data.parts[data.parts.index("datasets"):])
    torch.set_num_threads(1)
    summary = evaluate(load_predictor(checkpoint), data, every=every, limit=limit, progress=False).summary()
    figures = {"data": str(relative), "every": every, "limit": limit,
               **{k: summary[k] for k in ("objects", "NoC@85", "NoC@90", "mIoU@1", "mIoU@5")}}
    out = checkpoint.with_name(checkpoint.stem + "_regression.json")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}: {figures}")


def check_grow_to(init: Path | None, grow_to: dict) -> None:
    """Refuse a growth the --init net cannot take before any data is loaded."""
    from workers.model.checkpoint import load_checkpoint
    from workers.model.network import NetConfig, check_growth

    if not init:
        raise SystemExit("--deepen, --widen, --decoder-width and --context-width grow the net of --init")
    old = NetConfig.from_dict(load_checkpoint(init)["net"])
    try:
        check_growth(old, NetConfig.from_dict({**old.to_dict(), **grow_to}))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from workers.model.data import SampleGenerator, load_folder, sampling_weights
    from workers.model.train import TrainConfig, lineage_totals, train

    for name, given in (("--weight", args.weight), ("--first-click-weight", args.first_click_weight)):
        if given and len(given) != len(args.data):
            raise SystemExit(f"give one {name} per --data folder")
        try:  # before any data is loaded: the generator checks them the same way
            sampling_weights(given, len(args.data))
        except ValueError as exc:
            raise SystemExit(f"{name}: {exc}") from None
    if args.resume and not args.out.exists():
        raise SystemExit(f"--resume: no checkpoint at {args.out}")
    if args.best and not (args.validate_images and args.holdout_every):
        raise SystemExit("--best judges checkpoints on held-out images: it needs --validate-images and "
                         "--holdout-every above 0")
    grow_to = {k: v for k, v in (("blocks", args.deepen), ("widths", args.widen),
                                 ("decoder_width", args.decoder_width), ("context_width", args.context_width)) if v}
    if grow_to:
        check_grow_to(args.init, grow_to)
    if not 0.0 <= args.first_click_share <= 1.0:
        raise SystemExit(f"--first-click-share is a share between 0 and 1, not {args.first_click_share}")
    if args.first_click_weight and not args.first_click_share:
        raise SystemExit("--first-click-weight weighs the first-click batches: give --first-click-share above 0")
    folders = []
    for d in args.data:
        images = load_folder(d, holdout_every=args.holdout_every)
        print(f"{d}: {len(images)} training images, {sum(len(im.objects) for im in images)} objects")
        folders.append(images)
    cfg = TrainConfig(samples=args.samples, batch_size=args.batch_size, lr=args.lr, size=args.size,
                      threads=args.threads, data_workers=args.workers, seed=args.seed,
                      checkpoint_every_s=args.checkpoint_every, bf16=not args.no_bf16,
                      grow_to=grow_to, first_click_share=args.first_click_share, device=args.device,
                      stop_after_s=60 * args.minutes,
                      data={Path(d).name: w for d, w in zip(args.data, args.weight or [1.0] * len(args.data))},
                      first_click_data={Path(d).name: w for d, w in zip(args.data, args.first_click_weight or [])})
    init = args.out if args.resume else args.init
    validate = None
    if args.validate_images and args.holdout_every:
        validate = KeepBest(lambda path, state: holdout_metrics(path, args.data, args.holdout_every,
                                                                args.validate_images), args.best)
    generator = SampleGenerator(folders, args.weight, size=args.size, first_click_weights=args.first_click_weight)
    state = train(generator, args.out, cfg, init=init,
                  resume=args.resume, on_checkpoint=validate)
    total = lineage_totals({**state, "config": {}})
    print(f"wrote {args.out}: {state['samples_seen']} samples in {state['wall_time_s'] / 60:.1f} min, "
          f"loss {state.get('loss', float('nan')):.4f}; with the runs it started from: {total['samples']} "
          f"samples, {total['hours']} h in {total['runs']} runs")
    return 0
