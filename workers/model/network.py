"""The click-conditioned segmentation network.

Input: RGB (B x 3 x H x W, normalised) and the guidance maps (B x G x H x W: positive clicks, negative clicks,
previous probability, colour cue). Output: one logit map B x 1 x H x W. H and W must be multiples of 32.

Shape of the net: a small residual encoder (strides 2 to 32) with a feature-pyramid decoder to stride 2, upsampled
to the input size. An optional context branch pools the deepest features over the whole frame (weighted by a learned
attention map) and adds the result to every position of the decoder's coarsest level: a first click sees the extent
of its object beyond the convolutions' reach. The guidance maps are fused "Conv1S"-style: their own conv stack maps
them to the stem's channel count, scaled by a learned factor that starts small, and added to the RGB stem's output,
so the RGB path stays clean.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    guidance_channels: int = 4
    widths: tuple[int, ...] = (24, 32, 64, 96, 128)  # stem (stride 2), then strides 4, 8, 16, 32
    blocks: tuple[int, ...] = (1, 2, 2, 1)  # residual blocks per stage after the stem
    decoder_width: int = 32
    context_width: int = 0  # hidden width of the whole-frame context branch (0: none)
    fusion_scale: float = 0.1  # initial value of the learned guidance scale

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        d = dict(d)
        for key in ("widths", "blocks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(self.conv1(x))), inplace=True)


class GuidanceFusion(nn.Module):
    """Conv1S: guidance maps -> stem channels at stride 2, times a learned scale."""

    def __init__(self, cin: int, cout: int, scale: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, 16, 3, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(16, cout, 3, 1, 1)
        )
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, guidance: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(guidance)


class FrameContext(nn.Module):
    """The deepest features pooled over the frame with learned attention weights, mapped to the decoder's width:
    one vector per image, added at every position of the coarsest decoder level."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__()
        self.score = nn.Conv2d(cin, 1, 1)
        self.mlp = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = torch.softmax(self.score(x).flatten(2).float(), dim=-1).to(x.dtype)  # B x 1 x HW
        pooled = torch.einsum("bcn,bon->bc", x.flatten(2), attention)
        return self.mlp(pooled[:, :, None, None])


class ClickSegNet(nn.Module):
    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = conv_bn_relu(3, w[0], stride=2)
        self.fusion = GuidanceFusion(config.guidance_channels, w[0], config.fusion_scale)
        stages = []
        for i, n in enumerate(config.blocks):
            layers = [conv_bn_relu(w[i], w[i + 1], stride=2)]
            layers += [ResidualBlock(w[i + 1]) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        # Decoder widths per level: full width at strides 4-32, half at stride 2 where pixels are 4x as many.
        d = [config.decoder_width // 2] + [config.decoder_width] * (len(w) - 1)
        self.laterals = nn.ModuleList([nn.Conv2d(c, dc, 1) for c, dc in zip(w, d)])
        self.reduce = nn.ModuleList([nn.Conv2d(d[i + 1], d[i], 1) for i in range(len(w) - 1)])
        self.smooth = nn.ModuleList([conv_bn_relu(dc, dc) for dc in d[:-1]])
        self.head = nn.Conv2d(d[0], 1, 1)
        self.context = FrameContext(w[-1], config.context_width, d[-1]) if config.context_width else None

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(image) + self.fusion(guidance))
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.laterals[-1](feats[-1])
        if self.context is not None:
            y = y + self.context(feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            y = F.interpolate(self.reduce[i](y), size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.smooth[i](y + self.laterals[i](feats[i]))
        logits = self.head(y)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def fuse_for_inference(net: ClickSegNet) -> ClickSegNet:
    """Fold every BatchNorm into the convolution before it (eval mode only): the same function, fewer passes
    over memory. Returns the same module, changed in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
        elif isinstance(module, ResidualBlock) and isinstance(module.bn2, nn.BatchNorm2d):
            module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
            module.bn2 = nn.Identity()
    return net


def check_growth(old: NetConfig, new: NetConfig) -> None:
    """ValueError unless `new` extends `old` layer by layer, as `grow` needs."""
    grows = (len(new.widths) == len(old.widths) and len(new.blocks) == len(old.blocks)
             and all(n >= o for n, o in zip(new.widths, old.widths))
             and all(n >= o for n, o in zip(new.blocks, old.blocks))
             and new.decoder_width >= old.decoder_width and new.context_width >= old.context_width
             and new.guidance_channels == old.guidance_channels)
    if not grows:
        raise ValueError(f"the net cannot grow from widths {old.widths}, blocks {old.blocks}, decoder width "
                         f"{old.decoder_width} to widths {new.widths}, blocks {new.blocks}, decoder width "
                         f"{new.decoder_width}: each must extend the old one, layer by layer (context width "
                         f"{old.context_width} to {new.context_width})")


def grow(net: ClickSegNet, config: NetConfig) -> ClickSegNet:
    """A larger net computing exactly what `net` computes, so training goes on with more capacity and nothing
    already learned lost. `config` may add residual blocks per stage and widen any layer (encoder widths, decoder
    width, the context branch's width, or add the context branch); everything else must match.

    Every old weight keeps its place (old channels first). A new channel is initialised as usual, so it carries a
    signal and gets gradients, but the old channels' weights from it start at zero, so nothing old sees it yet
    (zeroing the new channel itself would leave it dead behind its ReLU). A new residual block starts with its
    last BatchNorm's scale and shift at zero: the identity on its non-negative input. A new context branch starts
    with its output layer at zero: it adds nothing until training finds a use for it."""
    old = net.config
    check_growth(old, config)
    grown = ClickSegNet(config)
    state = grown.state_dict()
    unexpected = set(net.state_dict()) - set(state)
    if unexpected:
        raise ValueError(f"weights that the larger net has no place for: {sorted(unexpected)[:3]}")
    with torch.no_grad():
        for key, prior in net.state_dict().items():
            value = state[key]
            if value.dim() >= 2:  # a convolution: [out, in, ...]
                value[:prior.shape[0], prior.shape[1]:] = 0
            value[tuple(slice(0, n) for n in prior.shape)] = prior
    grown.load_state_dict(state)
    for stage, b, o in zip(grown.stages, config.blocks, old.blocks):
        for block in list(stage)[1 + o:1 + b]:  # [downsampling conv, block 1, ..., block b]
            nn.init.zeros_(block.bn2.weight)
            nn.init.zeros_(block.bn2.bias)
    if config.context_width and not old.context_width:
        nn.init.zeros_(grown.context.mlp[-1].weight)
        nn.init.zeros_(grown.context.mlp[-1].bias)
    return grown
