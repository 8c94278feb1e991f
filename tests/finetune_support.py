"""Fine-tuning tests and benchmark helpers: Label Studio webhook bodies built from masks (brush RLE made with the
SDK's own encoder, as Label Studio's editor does), a tiny checkpoint, and synthetic annotated images."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, UTC
from pathlib import Path

import cv2
import numpy as np

from model_support import disk_scene

TINY_NET = dict(widths=(8, 16, 16, 24, 24), blocks=(1, 1, 1, 1), decoder_width=16)
T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from workers.model.checkpoint import save_checkpoint
    from workers.model.network import ClickSegNet, NetConfig

    torch.manual_seed(seed)
    save_checkpoint(path, ClickSegNet(NetConfig(**TINY_NET)))
    return path


def annotation_body(template: dict, ann_id: int, project: int, task_id: int, image_url: str,
                    masks: list[np.ndarray], updated: datetime | None = None, cancelled: bool = False) -> dict:
    """An ANNOTATION_CREATED body like the recorded one, with one brush region per mask."""
    from label_studio_sdk.converter.brush import mask2rle

    body = copy.deepcopy(template)
    body["action"] = "ANNOTATION_CREATED"
    h, w = masks[0].shape
    results = []
    for i, mask in enumerate(masks):
        results.append({
            "id": f"r{ann_id}-{i}", "from_name": "brush", "to_name": "image", "type": "brushlabels",
            "original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
                      "brushlabels": ["Cat"]},
        })
    annotation = body["annotation"]
    annotation.update(id=ann_id, result=results, task=task_id, project=project, was_cancelled=cancelled,
                      updated_at=(updated or T0 + timedelta(seconds=ann_id)).isoformat().replace("+00:00", "Z"))
    body["project"]["id"] = project
    body["task"].update(id=task_id, project=project, data={"image": image_url})
    return body


def disk_images(root: Path, count: int, size: tuple[int, int] = (96, 128)) -> list[tuple[str, list[np.ndarray]]]:
    """`count` PNG files of a disk scene in `root`: [(file name, [mask])]."""
    out = []
    h, w = size
    for i in range(count):
        rgb, mask = disk_scene(h=h, w=w, cx=40 + 6 * i, cy=40 + 2 * i, r=18 + i % 5, seed=i)
        name = f"disk{i}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out.append((name, [mask]))
    return out


def predict_body(template: dict, image_url: str, size: tuple[int, int], clicks: list[tuple[float, float, bool]],
                 project: int, region: str = "r0") -> dict:
    """An interactive /predict body like Label Studio's (the recorded one), smart keypoints at (x%, y%, positive),
    for a project."""
    body = copy.deepcopy(template)
    body["project"] = f"{project}.1795586130"
    body["tasks"][0]["data"]["image"] = image_url
    w, h = size
    first = body["params"]["context"]["result"][0]
    regions = []
    for i, (x, y, positive) in enumerate(clicks):
        r = copy.deepcopy(first)
        r.update(id=region if i == 0 else f"{region}-{i}", is_positive=positive, original_width=w, original_height=h)
        r["value"].update(x=x, y=y)
        regions.append(r)
    body["params"]["context"]["result"] = regions
    return body
