"""The learned click predictor: image + clicks (+ the previous prediction) -> full-size probability map.

    predictor = load_predictor("base")           # or a checkpoint path
    predictor.set_image(rgb)                     # H x W x 3 uint8
    first = predictor.predict([Click(x, y, True)])
    second = predictor.predict([Click(x, y, True), Click(x2, y2, False)], prev=first)

The first click looks at the whole image resized to `long_side` (or, with `first_click_side`, at a box of that
side around the click), and, when that mask is not small, at the same box resized to the coarser
`first_click_coarse_side`, the two probability maps averaged; from the second click on (zoom-in) the network looks
at a box around the previous mask and the positive clicks. Flip averaging runs the network on the mirrored frame too
and averages the two probability maps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import BASE_CHECKPOINT, build_net, load_checkpoint
from .clicks import Click
from .guidance import guidance_maps
from .network import ClickSegNet, fuse_for_inference
from .predictor_base import THRESHOLD, Predictor
from .transforms import Frame, zoom_in_box

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@dataclass(frozen=True)
class PredictorConfig:
    long_side: int = 320  # the frame's longer side, in network pixels
    zoom_in: bool = True
    zoom_expand: float = 1.4
    zoom_min_side: int = 200
    first_click_side: int = 0  # 0: a first click sees the whole image; else a box of at least this side around it
    # A first click on a large object is often answered with the part around it: a coarser view lets the network
    # reach across the whole object, but blurs a small one, so it is added only when the first view's mask covers
    # at least `first_click_coarse_min_area` of the frame (both chosen on held-out images: weights/MODEL_CARD.md).
    first_click_coarse_side: int = 192  # 0: one view only
    first_click_coarse_min_area: float = 0.05
    flip: bool = False
    bf16: bool = True  # bfloat16 convolutions where the CPU has them (AVX512-BF16, AMX); see README figures
    keep_clicked_component: bool = True  # drop mask parts that touch no positive click

    def to_dict(self) -> dict:
        return asdict(self)


def to_tensors(rgb: np.ndarray, guidance: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs from B x H x W x 3 uint8 frames and B x 4 x H x W guidance (channels_last)."""
    image = torch.from_numpy((rgb.astype(np.float32) - MEAN) / STD).permute(0, 3, 1, 2)
    g = torch.from_numpy(guidance)
    return image.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)


class ClickSegPredictor(Predictor):
    name = "clickseg"

    def __init__(self, net: ClickSegNet, config: PredictorConfig = PredictorConfig(), device: str = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        self.net = fuse_for_inference(net).to(self.device, memory_format=torch.channels_last)
        self.config = config

    def frame_for(self, clicks: list[Click], prev_prob: np.ndarray | None, box=None) -> Frame:
        """The part of the image the network looks at: the whole image for a first click, the zoom-in box from the
        second click, and a given object box (enlarged like a zoom-in box) from the start."""
        h, w = self.image.shape[:2]
        if box is not None:
            x0, y0, x1, y1 = box
            corners = [Click(x0, y0, True), Click(x1 - 1, y1 - 1, True)]
            return Frame.around(zoom_in_box(clicks + corners, None, (h, w), self.config.zoom_expand,
                                            self.config.zoom_min_side), self.config.long_side)
        box = (0, 0, w, h)
        if self.config.zoom_in and len(clicks) == 1 and self.config.first_click_side:
            # Domains of small objects only (chosen by fine-tuning): the whole image would leave the object a few
            # network pixels wide, while a box around the click shows it as large as the later zoom-in will.
            box = zoom_in_box(clicks, None, (h, w), self.config.zoom_expand, self.config.first_click_side)
        elif self.config.zoom_in and len(clicks) > 1:
            prev_mask = None if prev_prob is None else prev_prob > THRESHOLD
            box = zoom_in_box(clicks, prev_mask, (h, w), self.config.zoom_expand, self.config.zoom_min_side)
        return Frame.around(box, self.config.long_side)

    @torch.inference_mode()
    def _predict_prob(self, clicks: list[Click], prev_prob: np.ndarray | None, box=None) -> np.ndarray:
        frame = self.frame_for(clicks, prev_prob, box)
        canvas = np.zeros(self.image.shape[:2], np.float32) if prev_prob is None else prev_prob.astype(np.float32)
        fprob = self._frame_prob(frame, clicks, prev_prob)
        side = self.config.first_click_coarse_side
        if (len(clicks) == 1 and box is None and 0 < side < self.config.long_side
                and (fprob > THRESHOLD).mean() >= self.config.first_click_coarse_min_area):
            coarse = Frame.around((frame.x0, frame.y0, frame.x1, frame.y1), side)
            coarse_prob = coarse.paste(self._frame_prob(coarse, clicks, prev_prob), canvas.copy())
            return (frame.paste(fprob, canvas) + coarse_prob) / 2
        return frame.paste(fprob, canvas)

    def _frame_prob(self, frame: Frame, clicks: list[Click], prev_prob: np.ndarray | None) -> np.ndarray:
        """The network's probabilities in `frame` (frame-sized)."""
        rgb = frame.crop(self.image)
        fclicks = frame.clicks_in(clicks)
        fprev = None if prev_prob is None else frame.crop(prev_prob)
        guidance = guidance_maps(rgb, fclicks, fprev)
        image_t, guidance_t = (t.to(self.device) for t in to_tensors(rgb[None], guidance[None]))
        if self.config.flip:
            image_t = torch.cat([image_t, image_t.flip(-1)])
            guidance_t = torch.cat([guidance_t, guidance_t.flip(-1)])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            prob = torch.sigmoid(self.net(image_t, guidance_t).float())
        if self.config.flip:
            prob = (prob[:1] + prob[1:].flip(-1)) / 2
        fprob = prob[0, 0].cpu().numpy()
        if self.config.keep_clicked_component:
            fprob = keep_clicked_components(fprob, fclicks)
        return fprob


def keep_clicked_components(prob: np.ndarray, clicks: list[Click]) -> np.ndarray:
    """Zero the parts of the mask (prob > THRESHOLD) that contain no positive click: a stray blob elsewhere in
    the frame is never what the annotator pointed at."""
    mask = (prob > THRESHOLD).astype(np.uint8)
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 2:
        return prob
    h, w = mask.shape
    keep = np.zeros(n, bool)
    for c in clicks:
        if c.positive:
            keep[labels[min(h - 1, max(0, int(round(c.y)))), min(w - 1, max(0, int(round(c.x))))]] = True
    keep[0] = True  # background stays as it is
    if not keep[1:].any():
        return prob
    out = prob.copy()
    out[~keep[labels]] = np.minimum(out[~keep[labels]], THRESHOLD - 0.01)
    return out


def load_predictor(spec: str | Path = "base", device: str = "cpu", **overrides) -> ClickSegPredictor:
    """A predictor from the bundled model ("base") or a checkpoint path, computing on `device` (a torch device:
    "cpu", "cuda"); keyword arguments override the checkpoint's PredictorConfig (e.g. flip=True, zoom_in=False)."""
    path = BASE_CHECKPOINT if str(spec) == "base" else Path(spec)
    payload = load_checkpoint(path)
    config = {**payload.get("predictor", {}), **overrides}
    return ClickSegPredictor(build_net(payload), PredictorConfig(**config), device=device)
