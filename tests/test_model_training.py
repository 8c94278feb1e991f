"""Training clicks, the loss, a tiny training run, checkpoints."""
import numpy as np
import pytest
import torch

from model_support import disk_scene
from workers.model.checkpoint import build_net, load_checkpoint, save_checkpoint
from workers.model.data import LoadedImage, SampleGenerator, _object
from workers.model.loss import normalized_focal_loss
from workers.model.network import ClickSegNet, NetConfig, grow
from workers.model.sampler import corrective_click, initial_clicks
from workers.model.train import TrainConfig, _Batches, lineage_totals, train, train_step

SMALL = NetConfig(widths=(8, 16, 16, 24, 24), blocks=(1, 1, 1, 1), decoder_width=16)


def test_initial_clicks_start_positive_inside_and_put_negatives_outside():
    _, mask = disk_scene()
    others = np.zeros_like(mask)
    others[:10, :10] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        clicks = initial_clicks(rng, mask, others)
        assert clicks[0].positive
        for c in clicks:
            assert mask[int(c.y), int(c.x)] == c.positive


def test_corrective_click_goes_to_the_larger_error_with_its_sign():
    _, mask = disk_scene()
    rng = np.random.default_rng(0)
    missed = mask.copy()
    missed[:, 60:] = False  # right half of the disk missed: a positive click there
    c = corrective_click(rng, missed, mask)
    assert c.positive and c.x >= 60 and mask[int(c.y), int(c.x)]
    spill = mask.copy()
    spill[:, 100:] = True  # a band of background covered: a negative click there
    c = corrective_click(rng, spill, mask)
    assert not c.positive and c.x >= 100
    assert corrective_click(rng, mask, mask) is None


def test_normalized_focal_loss_is_lower_for_better_logits():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 4
    assert normalized_focal_loss(good, target) < normalized_focal_loss(torch.zeros_like(good), target)
    assert normalized_focal_loss(torch.zeros_like(good), target) < normalized_focal_loss(-good, target)


def _generator(size=64):
    images = []
    for seed in range(6):
        rgb, mask = disk_scene(seed=seed, cx=40 + 8 * seed, cy=45, r=14 + 2 * seed)
        images.append(LoadedImage(rgb, [_object(mask)]))
    return SampleGenerator([images], size=size)


def test_a_tiny_training_run_lowers_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    gen = _generator()
    net = ClickSegNet(SMALL).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    cfg = TrainConfig(batch_size=8, size=64, bf16=False, max_corrective_clicks=1)
    losses = [train_step(net, opt, [gen.sample(rng) for _ in range(8)], rng, cfg) for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])


def _trained_looking(net: ClickSegNet) -> ClickSegNet:
    for module in net.modules():  # BatchNorm statistics away from their defaults, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net


def _same_function(grown: ClickSegNet, net: ClickSegNet) -> None:
    image, guidance = torch.randn(2, 3, 64, 64), torch.rand(2, 4, 64, 64)
    for mode in (False, True):  # running statistics, then batch statistics
        net.train(mode), grown.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(grown(image, guidance), net(image, guidance))


def _gradient(grown: ClickSegNet) -> dict[str, torch.Tensor]:
    grown.train().zero_grad()
    image, guidance = torch.randn(2, 3, 64, 64), torch.rand(2, 4, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    normalized_focal_loss(grown(image, guidance), target).backward()
    return {name: p.grad for name, p in grown.named_parameters()}


def test_a_deepened_net_computes_what_the_original_did_and_then_trains_its_new_blocks():
    torch.manual_seed(0)
    net = _trained_looking(ClickSegNet(SMALL))
    grown = grow(net, NetConfig.from_dict({**SMALL.to_dict(), "blocks": (1, 2, 1, 3)}))
    assert grown.config.blocks == (1, 2, 1, 3) and len(grown.stages[3]) == 1 + 3
    _same_function(grown, net)
    new_block = grown.stages[3][3]
    assert not new_block.bn2.weight.detach().any()
    assert float(_gradient(grown)["stages.3.3.bn2.weight"].abs().sum()) > 0
    for blocks in ((1, 1, 1), (1, 1, 1, 0)):
        with pytest.raises(ValueError, match="must extend"):
            grow(grown, NetConfig.from_dict({**SMALL.to_dict(), "blocks": blocks}))


def test_a_widened_net_computes_what_the_original_did_and_then_trains_its_new_channels():
    torch.manual_seed(0)
    net = _trained_looking(ClickSegNet(SMALL))
    wider = tuple(w + 8 for w in SMALL.widths)
    grown = grow(net, NetConfig.from_dict({**SMALL.to_dict(), "widths": wider,
                                           "decoder_width": SMALL.decoder_width + 8, "blocks": (1, 2, 1, 2)}))
    assert grown.stages[0][0][0].weight.shape[:2] == (wider[1], wider[0])
    _same_function(grown, net)
    grads = _gradient(grown)
    # The old channels' weights from new ones start at zero and are what learn first: the new channels carry a
    # signal (not dead behind a ReLU), so those weights get a gradient on the first step.
    old_in = SMALL.widths[1]
    conv = "stages.1.0.0.weight"  # stride-8 downsampling conv: [out, in, 3, 3]
    assert not grown.state_dict()[conv][:SMALL.widths[2], old_in:].any()
    assert float(grads[conv][:SMALL.widths[2], old_in:].abs().sum()) > 0
    head = grads["head.weight"][:, SMALL.decoder_width // 2:]
    assert float(head.abs().sum()) > 0
    with pytest.raises(ValueError, match="must extend"):
        grow(grown, SMALL)


def test_a_net_given_a_context_branch_computes_what_it_did_and_then_trains_the_branch():
    torch.manual_seed(0)
    net = _trained_looking(ClickSegNet(SMALL))
    grown = grow(net, NetConfig.from_dict({**SMALL.to_dict(), "context_width": 12}))
    _same_function(grown, net)
    grads = _gradient(grown)
    # The branch's output layer starts at zero, so it is what learns first; the layers behind it follow once it
    # has moved off zero.
    assert not grown.context.mlp[-1].weight.detach().any()
    assert float(grads["context.mlp.2.weight"].abs().sum()) > 0
    with torch.no_grad():  # a branch in use, then widened: its new hidden channels start unseen
        grown.context.mlp[-1].weight.normal_()
    wider = grow(grown, NetConfig.from_dict({**SMALL.to_dict(), "context_width": 20}))
    _same_function(wider, grown)
    with pytest.raises(ValueError, match="context width 12 to 0"):
        grow(grown, SMALL)


def test_training_writes_a_resumable_checkpoint(tmp_path):
    gen = _generator()
    cfg = TrainConfig(samples=32, batch_size=8, size=64, data_workers=0, net=SMALL.to_dict(), bf16=False)
    out = tmp_path / "run.pt"
    state = train(gen, out, cfg, progress=False)
    assert state["samples_seen"] == 32
    payload = load_checkpoint(out)
    assert payload["train"]["samples_seen"] == 32 and "optimizer" in payload
    cfg.samples = 48
    state = train(gen, out, cfg, init=out, resume=True, progress=False)
    assert state["samples_seen"] == 48 and state["steps"] == 6


def test_first_click_batches_train_on_one_positive_click_and_nothing_else():
    gen = _generator()
    net = ClickSegNet(SMALL).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def clicks_after_steps(first_click: bool) -> list[list]:
        rng = np.random.default_rng(1)
        cfg = TrainConfig(batch_size=4, size=64, bf16=False, max_corrective_clicks=3)
        batches = [[gen.sample(rng) for _ in range(4)] for _ in range(6)]
        for batch in batches:
            train_step(net, opt, batch, rng, cfg, first_click)
        return [s.clicks for batch in batches for s in batch]

    assert all(len(c) == 1 and c[0].positive for c in clicks_after_steps(True))
    assert max(len(c) for c in clicks_after_steps(False)) > 1  # random initial and corrective clicks otherwise


class _PickedImages(SampleGenerator):
    """A generator whose samples are the images it picked (the folder choice is what is tested, not the crop)."""

    def _try(self, rng, item):
        return item


def test_first_click_batches_come_at_their_share_from_their_own_folders():
    images = _generator().folders[0]
    parts, wholes = images[:3], images[3:]
    gen = _PickedImages([parts, wholes], [1.0, 0.0], size=64, first_click_weights=[0.0, 1.0])
    cfg = TrainConfig(batch_size=3, size=64, first_click_share=0.3)
    batches = iter(_Batches(gen, cfg, seed=0))
    drawn = [next(batches) for _ in range(200)]
    for first, batch in drawn:
        assert all(any(picked is im for im in wholes) == first for picked in batch)
    assert 35 <= sum(first for first, _ in drawn) <= 85  # 60 expected at a share of 0.3 (sd 6.5)
    with pytest.raises(ValueError, match="sampling weights"):
        SampleGenerator([parts, wholes], first_click_weights=[0.0, 0.0])


def test_a_run_started_from_another_counts_its_training_in_the_lineage(tmp_path):
    gen = _generator()
    cfg = TrainConfig(samples=32, batch_size=8, size=64, data_workers=0, net=SMALL.to_dict(), bf16=False,
                      lr=2e-3, data={"disks": 1.0})
    first = train(gen, tmp_path / "a.pt", cfg, progress=False)
    assert first["lineage"] == []
    cfg.samples, cfg.lr = 16, 1e-3
    second = train(gen, tmp_path / "b.pt", cfg, init=tmp_path / "a.pt", progress=False)
    (earlier,) = second["lineage"]
    assert earlier["samples"] == 32 and earlier["lr"] == 2e-3 and earlier["data"] == {"disks": 1.0}
    stored = load_checkpoint(tmp_path / "b.pt")["train"]
    assert lineage_totals(stored)["samples"] == 48 and lineage_totals(stored)["runs"] == 2
    cfg.samples = 24  # resuming continues the same run: the lineage stays as it was
    resumed = train(gen, tmp_path / "b.pt", cfg, init=tmp_path / "b.pt", resume=True, progress=False)
    assert resumed["lineage"] == second["lineage"] and resumed["samples_seen"] == 24


def test_keep_best_copies_a_checkpoint_only_when_its_held_out_score_improves(tmp_path):
    from orchestrator.commands.train import KeepBest

    scores = iter([5.0, 6.0, 4.0])
    validate = lambda path, state: {"holdout_10_clicks": {"a": {"NoC@90": next(scores)}}}
    latest, best = tmp_path / "latest.pt", tmp_path / "best.pt"
    keep = KeepBest(validate, best)
    kept = []
    for step in range(3):
        save_checkpoint(latest, ClickSegNet(SMALL), train={"samples_seen": step}, optimizer={})
        keep(latest, {"samples_seen": step})
        payload = load_checkpoint(best)
        kept.append((payload["train"]["samples_seen"], payload["metrics"]["holdout_10_clicks"]["a"]["NoC@90"]))
        assert "optimizer" not in payload
    assert kept == [(0, 5.0), (0, 5.0), (2, 4.0)]
    assert KeepBest(validate, best).score == 4.0  # a later run starts from the best file's own score


def test_checkpoint_round_trip_keeps_the_weights(tmp_path):
    net = ClickSegNet(SMALL)
    save_checkpoint(tmp_path / "a.pt", net, predictor={"long_side": 256})
    payload = load_checkpoint(tmp_path / "a.pt")
    again = build_net(payload)
    for (k, v), (_, w) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    try:
        load_checkpoint(tmp_path / "junk.pt")
    except Exception as exc:  # torch raises its own unpickling error type
        assert "junk" in str(exc) or "checkpoint" in str(exc) or "pickle" in str(exc).lower()
    else:
        raise AssertionError("a junk file was accepted as a checkpoint")


def test_train_command_writes_config_train_state_and_holdout_metrics(tmp_path):
    import cv2

    from orchestrator.cli import main

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(6):
        rgb, mask = disk_scene(seed=i, cx=40 + 8 * i)
        cv2.imwrite(str(tmp_path / "data" / "images" / f"im{i}.png"), rgb[:, :, ::-1])
        cv2.imwrite(str(tmp_path / "data" / "masks" / f"im{i}.png"), mask.astype(np.uint8) * 255)
    out = tmp_path / "run.pt"
    best = tmp_path / "best.pt"
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--samples", "16", "--size", "64",
            "--holdout-every", "3", "--validate-images", "1", "--workers", "0", "--best", str(best), "--no-bf16"]
    assert main(args) == 0
    payload = load_checkpoint(out)
    assert payload["train"]["samples_seen"] == 16 and payload["train"]["config"]["size"] == 64
    assert payload["train"]["config"]["data"] == {"data": 1.0}
    holdout = payload["metrics"]["holdout_10_clicks"]["data"]
    assert holdout["objects"] == 1 and 1 <= holdout["NoC@85"] <= 10
    assert load_checkpoint(best)["metrics"]["holdout_10_clicks"]["data"] == holdout
    assert main(args[:-1] + ["--resume", "--samples", "24"]) == 0
    assert load_checkpoint(out)["train"]["samples_seen"] == 24
    deeper = tmp_path / "deeper.pt"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--init", str(out),
                 "--deepen", "1,2,3,2", "--samples", "8", "--size", "64", "--validate-images", "0",
                 "--workers", "0", "--no-bf16"]) == 0
    payload = load_checkpoint(deeper)
    assert tuple(payload["net"]["blocks"]) == (1, 2, 3, 2) and payload["train"]["samples_seen"] == 8
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--init", str(deeper),
                 "--widen", ",".join(str(w + 4) for w in NetConfig().widths), "--decoder-width", "36", "--samples", "8",
                 "--size", "64", "--validate-images", "0", "--workers", "0", "--no-bf16"]) == 0
    payload = load_checkpoint(deeper)
    assert tuple(payload["net"]["widths"]) == tuple(w + 4 for w in NetConfig().widths)
    assert payload["net"]["decoder_width"] == 36 and tuple(payload["net"]["blocks"]) == (1, 2, 3, 2)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--init", str(deeper),
                 "--context-width", "16", "--samples", "8", "--size", "64", "--validate-images", "0",
                 "--workers", "0", "--no-bf16"]) == 0
    assert load_checkpoint(deeper)["net"]["context_width"] == 16
    with pytest.raises(SystemExit):  # argparse's usage error, before any data is loaded
        main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--deepen", "1,x,3,2"])
    with pytest.raises(SystemExit, match="grow the net of --init"):
        main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--widen", "8,8,8,8,8"])
    with pytest.raises(SystemExit, match="cannot grow from widths"):
        main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--init", str(deeper),
              "--widen", "8,8,8,8,8"])
    with pytest.raises(SystemExit, match="needs --validate-images"):
        main(["train", "--data", str(tmp_path / "data"), "--out", str(deeper), "--best", str(best),
              "--validate-images", "0"])
    with pytest.raises(SystemExit, match="give one --first-click-weight per --data"):
        main(args + ["--first-click-share", "0.5", "--first-click-weight", "1", "--first-click-weight", "1"])
    with pytest.raises(SystemExit, match="give --first-click-share above 0"):
        main(args + ["--first-click-weight", "1"])
