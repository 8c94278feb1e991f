"""The bundled model still does what its model card says: the NoC figures recorded for a few GrabCut images,
reproduced by the same evaluator (bfloat16 kernels may differ slightly across CPUs: a small tolerance)."""
import json

import pytest
import torch

from workers.model.checkpoint import BASE_CHECKPOINT, load_checkpoint

from support import SHARED

REFERENCE = BASE_CHECKPOINT.with_name("base_regression.json")


def test_bundled_checkpoint_is_small_and_complete():
    assert BASE_CHECKPOINT.stat().st_size <= 20 * 2**20
    payload = load_checkpoint(BASE_CHECKPOINT)
    assert "optimizer" not in payload
    assert payload["train"]["samples_seen"] > 0 and payload["predictor"]


def test_bundled_model_reaches_its_recorded_figures():
    from workers.model.evaluator import evaluate
    from workers.model.predictor import load_predictor

    reference = json.loads(REFERENCE.read_text())
    torch.set_num_threads(1)
    result = evaluate(load_predictor("base"), SHARED / reference["data"], every=reference["every"],
                      limit=reference["limit"], progress=False)
    summary = result.summary()
    assert summary["objects"] == reference["objects"]
    assert summary["NoC@85"] <= reference["NoC@85"] + 0.5
    assert summary["NoC@90"] <= reference["NoC@90"] + 0.5
    for k in ("mIoU@1", "mIoU@5"):
        assert summary[k] == pytest.approx(reference[k], abs=0.03), k
