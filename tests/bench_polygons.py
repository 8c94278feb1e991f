"""Benchmark of polygon answers (not a test; pytest does not collect bench_*.py).

For every object of a dataset folder (eval/davis345 by default), the masks a polygon answer is made from: the
ground-truth mask, and the model's masks after the first --clicks clicks of the NoC clicker. For each mask:
- IoU of the polygons, drawn back as Label Studio fills them, with the mask (median, 5th percentile, worst);
- vertices per object (all its regions) and per region, regions per object;
- milliseconds to build the polygon answer (tracing, simplifying, the regions in percent), beside those to build
  the brush answer it replaces (Label Studio's brush RLE), on the same mask in the same run: median and p95.

Run: .venv/bin/python tests/bench_polygons.py --out polygons.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio import protocol  # noqa: E402
from integrations.label_studio.labeling_config import BRUSHES, POLYGONS, Answer  # noqa: E402
from integrations.polygons import PolygonOptions, draw  # noqa: E402
from workers.model.clicker import Clicker  # noqa: E402
from workers.model.datasets import read_image, read_mask, scan  # noqa: E402
from workers.model.evaluator import iou  # noqa: E402
from workers.model.predictor import load_predictor  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def masks_of(data: Path, clicks: int, model: str):
    predictor = load_predictor(model)
    for entry in scan(data):
        image = read_image(entry.image_path)
        predictor.set_image(image)
        for mask_path in entry.mask_paths:
            gt = read_mask(mask_path)
            yield "ground truth", gt
            clicker, prev = Clicker(gt), None
            for k in range(1, clicks + 1):
                if clicker.click(None if prev is None else prev.mask) is None:
                    break
                prev = predictor.predict(list(clicker.clicks), prev)
                yield f"model, click {k}", prev.mask


def percentile(values, q):
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "eval" / "davis345")
    parser.add_argument("--clicks", type=int, default=3, help="model masks after clicks 1..N of each object")
    parser.add_argument("--model", default="base")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = PolygonOptions()
    polygon_answer = Answer(POLYGONS, "polygon", "image", "Object")
    brush_answer = Answer(BRUSHES, "brush", "image", "Object")
    rows: dict[str, list[dict]] = {}
    for kind, mask in tqdm(masks_of(args.data, args.clicks, args.model), desc="masks", unit="mask"):
        if not mask.any():
            continue
        height, width = mask.shape
        t0 = time.perf_counter()
        regions, polygons = protocol.polygon_results(mask, polygon_answer, options)
        t1 = time.perf_counter()
        protocol.brush_result(mask, brush_answer)
        t2 = time.perf_counter()
        drawn = draw(polygons, width, height)
        rows.setdefault(kind, []).append({
            "iou": iou(mask, drawn), "vertices": sum(len(p) for p in polygons),
            "region_vertices": [len(p) for p in polygons], "regions": len(regions),
            "polygon_ms": (t1 - t0) * 1000, "brush_ms": (t2 - t1) * 1000})
    report = {"data": str(args.data.relative_to(SHARED)) if args.data.is_relative_to(SHARED) else str(args.data),
              "options": vars(options), "model": args.model, "kinds": {}}
    for kind, found in rows.items():
        ious = [r["iou"] for r in found]
        vertices = [r["vertices"] for r in found]
        per_region = [v for r in found for v in r["region_vertices"]]
        report["kinds"][kind] = {
            "masks": len(found),
            "IoU median": statistics.median(ious), "IoU p5": percentile(ious, 5), "IoU worst": min(ious),
            "masks under min_iou": sum(i < options.min_iou for i in ious),
            "vertices per object median": statistics.median(vertices), "vertices per object max": max(vertices),
            "vertices per region median": statistics.median(per_region), "vertices per region max": max(per_region),
            "regions per object median": statistics.median([r["regions"] for r in found]),
            "regions per object max": max(r["regions"] for r in found),
            "polygon answer ms p50": percentile([r["polygon_ms"] for r in found], 50),
            "polygon answer ms p95": percentile([r["polygon_ms"] for r in found], 95),
            "brush answer ms p50": percentile([r["brush_ms"] for r in found], 50),
            "brush answer ms p95": percentile([r["brush_ms"] for r in found], 95),
        }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps({**report, "masks": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
