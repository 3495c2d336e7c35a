"""The official PSLA model, as the tests' reference: efficientnet_pytorch's EfficientNet (the official
backbone, `EfficientNet.from_name`, random weights: nothing is downloaded) and the EffNetAttention head,
written here from its maths (the psla repository's src/models/Models.py and HigherModels.py), with the
same module names, so that its state dict, saved under DataParallel's `module.`, is a released model file.

Also the official eval loader's fbank (src/dataloaders/audioset_dataset.py, `_wav2fbank` and the
normalisation in `__getitem__`), from its maths.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from torch import nn

PAPER_MEAN, PAPER_STD = -4.6476, 4.5699


class OfficialMultiHeadAttention(nn.Module):
    """Per head i: a = clamp(sigmoid(att_i(x)), 1e-7, 1 - 1e-7), c = sigmoid(cla_i(x)) over the frames t;
    out = sum_i head_weight_i * sum_t (a_t / sum_t a_t) c_t."""

    def __init__(self, n_in: int, n_out: int, heads: int):
        super().__init__()
        self.att = nn.ModuleList(nn.Conv2d(n_in, n_out, 1) for _ in range(heads))
        self.cla = nn.ModuleList(nn.Conv2d(n_in, n_out, 1) for _ in range(heads))
        self.head_weight = nn.Parameter(torch.full((heads,), 1.0 / heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T, 1]
        total = 0
        for i, (att, cla) in enumerate(zip(self.att, self.cla)):
            a = torch.sigmoid(att(x))[..., 0].clamp(1e-7, 1 - 1e-7)
            c = torch.sigmoid(cla(x))[..., 0]
            total = total + (a / a.sum(dim=2, keepdim=True) * c).sum(dim=2) * self.head_weight[i]
        return total


class OfficialEffNetAttention(nn.Module):
    """[B, T, F] -> unsqueeze(1) -> transpose(2, 3) -> extract_features -> AvgPool2d((4, 1)) over the 4
    frequency rows of 128 bins -> transpose(2, 3) -> attention heads."""

    def __init__(self, classes: int, b: int = 2, heads: int = 4):
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.effnet = EfficientNet.from_name(f"efficientnet-b{b}", in_channels=1)
        self.effnet._fc = nn.Identity()
        self.attention = OfficialMultiHeadAttention(self.effnet._conv_head.out_channels, classes, heads)
        self.avgpool = nn.AvgPool2d((4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.effnet.extract_features(x.unsqueeze(1).transpose(2, 3))
        return self.attention(self.avgpool(x).transpose(2, 3))


def official_model(classes: int, b: int = 2, heads: int = 4, seed: int = 0) -> OfficialEffNetAttention:
    """A reference model with random weights, in eval mode. Its BatchNorm statistics are measured on
    random input (at PyTorch's initialisation the signal fades through the blocks, and every input would
    get nearly the same scores), BatchNorm affine and head weights drawn at random, so that the input and
    every part of the computation show in the outputs."""
    torch.manual_seed(seed)
    model = OfficialEffNetAttention(classes, b, heads)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momentum = norms[0].momentum
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batches
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
        model.train()
        for _ in range(2):
            model(torch.randn(4, 256, 128))
        for norm in norms:
            norm.momentum = momentum
        for conv in [*model.attention.att, *model.attention.cla]:
            nn.init.normal_(conv.weight, std=0.1)
        model.attention.head_weight.uniform_(0.1, 0.5)
    return model.eval()


def released_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the released files hold it: saved from torch.nn.DataParallel."""
    return {f"module.{k}": v for k, v in model.state_dict().items()}


def official_fbank(wave: np.ndarray, target_length: int, rate: int = 16000, float16: bool = False) -> torch.Tensor:
    """The eval loader's input: the mean-removed wave's Kaldi fbank (128 bins, 10 ms shift, Hanning),
    zero-padded or cut to target_length frames, then (fbank - mean) / std. `float16`: the fbank rounded
    to float16 before the normalisation, as our features stage stores it."""
    waveform = torch.from_numpy(np.asarray(wave, np.float32))[None]
    waveform = waveform - waveform.mean()
    fbank = kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    missing = target_length - fbank.shape[0]
    fbank = nn.functional.pad(fbank, (0, 0, 0, missing)) if missing > 0 else fbank[:target_length]
    if float16:
        fbank = fbank.half().float()
    return (fbank - PAPER_MEAN) / PAPER_STD
