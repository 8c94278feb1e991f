"""Training bundles (the data that travels to a GPU machine) and time-limited training runs."""
import zipfile

import cv2
import numpy as np
import pytest

from model_support import disk_scene
from workers.model.bundle import pack_bundle
from workers.model.data import SampleGenerator, load_folder
from workers.model.datasets import scan
from workers.model.network import NetConfig
from workers.model.train import TrainConfig, _lr_factor, train

SMALL = NetConfig(widths=(8, 16, 16, 24, 24), blocks=(1, 1, 1, 1), decoder_width=16)


def _folder(root, n=7, h=300, w=400):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        rgb, mask = disk_scene(h=h, w=w, cx=120 + 20 * i, cy=150, r=60, seed=i)
        cv2.imwrite(str(root / "images" / f"im{i}.jpg"), rgb[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"im{i}_disk.png"), mask.astype(np.uint8) * 255)
        if i % 2:  # a second object on some images
            cv2.imwrite(str(root / "masks" / f"im{i}_corner.png"), np.pad(np.ones((40, 40), np.uint8) * 255,
                                                                        ((0, h - 40), (0, w - 40))))
    return root


def test_a_bundle_unpacks_to_the_same_folders_shrunk_with_the_same_images_held_out(tmp_path):
    source = _folder(tmp_path / "src" / "disks")
    summary = pack_bundle([source], tmp_path / "bundle.zip", max_side=200, progress=False)
    assert summary.folders == {"disks": 7} and summary.masks == 7 + 3
    zipfile.ZipFile(tmp_path / "bundle.zip").extractall(tmp_path / "unpacked")
    packed = tmp_path / "unpacked" / "disks"
    original, unpacked = scan(source), scan(packed)
    assert [e.stem for e in unpacked] == [e.stem for e in original]
    assert [[p.name for p in e.mask_paths] for e in unpacked] == [[p.name for p in e.mask_paths] for e in original]
    held_in = load_folder(packed, min_area=100, holdout_every=3, progress=False)
    assert len(held_in) == len(load_folder(source, min_area=100, holdout_every=3, progress=False)) == 4
    image = held_in[0]
    assert image.rgb.shape == (150, 200, 3)  # 300 x 400 shrunk to 200 on the longer side
    disk = max(image.objects, key=lambda o: o.area())
    assert abs(disk.area() - np.pi * 30**2) < 0.1 * np.pi * 30**2  # radius 60 became 30, edges still sharp


def test_a_bundle_over_its_size_limit_is_refused_and_leaves_no_file(tmp_path):
    source = _folder(tmp_path / "src" / "disks", n=3)
    with pytest.raises(ValueError, match="over"):
        pack_bundle([source], tmp_path / "bundle.zip", max_bytes=2_000, progress=False)
    assert not list(tmp_path.glob("bundle.zip*"))


def test_a_time_limited_run_stops_with_a_checkpoint_and_anneals_by_its_time(tmp_path):
    images = load_folder(_folder(tmp_path / "disks", n=4, h=96, w=128), min_area=100, progress=False)
    cfg = TrainConfig(samples=10_000, batch_size=4, size=64, data_workers=0, net=SMALL.to_dict(), bf16=False,
                      stop_after_s=1.0, warmup_samples=8)
    state = train(SampleGenerator([images], size=64), tmp_path / "run.pt", cfg, progress=False)
    assert 0 < state["samples_seen"] < 10_000 and (tmp_path / "run.pt").is_file()
    assert _lr_factor(100, cfg, elapsed_s=0.0) > 0.99
    assert _lr_factor(100, cfg, elapsed_s=0.5) == pytest.approx(0.51, abs=0.01)
    assert _lr_factor(100, cfg, elapsed_s=1.0) == pytest.approx(0.02)
