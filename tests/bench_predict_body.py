"""Benchmark of reading an interactive /predict body as the image fills with regions (not a test; pytest does not
collect bench_*.py).

Label Studio sends each task's drafts and predictions with every interactive request, brush RLE included. The body
here is the recorded one (shared/label_studio/requests) with N earlier answers on the image, each a brush region
of a davis345 ground-truth mask (854x480) in the task's predictions and in its draft, as Label Studio keeps them.
For N = 0, 20, 100: the body's size, and the ingress's CPU to read it (request bytes to PredictRequest), read in
full (json.loads) and read by schema (protocol.load_predict_json), side by side, median and p95 over --runs.

Run: .venv/bin/python tests/bench_predict_body.py
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.label_studio import protocol  # noqa: E402
from workers.model.datasets import read_mask, scan  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def body_with_regions(template: dict, masks: list[np.ndarray]) -> bytes:
    from label_studio_sdk.converter.brush import mask2rle

    body = copy.deepcopy(template)
    height, width = masks[0].shape if masks else (480, 854)
    regions = [{"id": f"r{i}", "type": "brushlabels", "from_name": "tag", "to_name": "image", "origin": "prediction",
                "original_width": width, "original_height": height, "image_rotation": 0, "score": 0.9,
                "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Cat"]}}
               for i, mask in enumerate(masks)]
    task = body["tasks"][0]
    task["predictions"] = [{"id": 1, "result": regions, "score": 0.9, "model_version": "base"}] if regions else []
    task["drafts"] = [{"id": 1, "result": regions, "lead_time": 30.0}] if regions else []
    return json.dumps(body).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", default="0,20,100")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    template = json.loads((SHARED / "label_studio" / "requests" / "predict_interactive_positive_keypoint.json")
                          .read_text())["body"]
    paths = [m for e in scan(SHARED / "datasets" / "eval" / "davis345") for m in e.mask_paths]
    readers = {"json.loads (in full)": protocol.load_json, "load_predict_json (RLE emptied, then by schema)":
               protocol.load_predict_json}
    print("| regions on the image | body | reader | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for count in (int(n) for n in args.regions.split(",")):
        raw = body_with_regions(template, [read_mask(p) for p in paths[:count]])
        timings = {name: [] for name in readers}
        for _ in range(args.runs):  # the two readers alternate, so they share the machine's moments
            for name, read in readers.items():
                t0 = time.perf_counter()
                protocol.parse_predict(read(raw))
                timings[name].append((time.perf_counter() - t0) * 1000)
        for name, values in timings.items():
            print(f"| {count} | {len(raw) / 1e6:.2f} MB | {name} | {np.median(values):.2f} | "
                  f"{np.percentile(values, 95):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
