"""Batched training-time augmentation on the training device: mixup, SpecAugment, normalisation.

Works on a batch already read from HDF5: ``fbank [B, T, F]`` (time-major log-mel Kaldi fbank,
not yet normalised, padded frames are zeros as the paper pads) and ``labels [B, C]``.
Everything is vectorised over the batch (no Python loop over samples, no host sync) and runs
on whatever device ``fbank`` lives on.

Randomness comes only from the ``generator`` argument, so a batch is reproducible from a seed.
The random numbers are drawn on the generator's device and then moved to ``fbank``'s device:
a CPU generator therefore gives the same masks and lambdas whether the batch is on CPU or CUDA;
a CUDA generator avoids the (tiny, ``[B]``-sized) host-to-device copies. With
``generator=None`` the global RNG of ``fbank``'s device is used.

The recipe (docs/recipe.md, "Augmentation order"):

* mixup: each sample, with probability ``prob``, is mixed with another random sample of the
  batch with ``lambda ~ Beta(alpha, alpha)``; labels are mixed with the same lambda. With
  ``augment.mixup_partner: dataset`` (the paper's) the loader has already drawn which samples are
  mixed and their partners, uniformly from the whole training split, and passes their fbanks in
  (``partner``); only lambda is drawn here. The paper
  mixes the waveforms ``lam * a + (1 - lam) * b`` before the fbank; with precomputed fbanks the
  default ``power`` domain approximates that by mixing mel powers,
  ``log(lam^2 exp(x_i) + (1 - lam)^2 exp(x_j))`` (exact up to the cross term
  ``2 lam (1 - lam) Re(A conj(B))``, which averages out for unrelated signals); ``logmel`` is
  plain ``lam x_i + (1 - lam) x_j``.
* SpecAugment: one frequency mask and one time mask per sample, drawn exactly as torchaudio's
  ``FrequencyMasking(freqm)`` then ``TimeMasking(timem)`` on one clip (the official loader, per
  item): a continuous width ``v = u1 * freqm``, a start ``v0 = u2 * (size - v)``, the band
  ``[floor(v0), floor(v0) + floor(v))`` (so ``floor(v)`` is uniform in ``0 .. freqm - 1``); masked
  value 0 before normalisation, as the paper.
* normalisation ``(x - mean) / std``.
"""

from __future__ import annotations

import torch

from pipeline.core.errors import PipelineError

__all__ = [
    "make_generator",
    "sample_beta",
    "mix",
    "mixup",
    "spec_augment",
    "normalise",
    "augment_batch",
    "prepare_eval_batch",
]

Number = float | torch.Tensor
MIXUP_DOMAINS = ("power", "logmel")


def make_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """A seeded generator on ``device`` (default CPU)."""
    return torch.Generator(device=device or "cpu").manual_seed(int(seed))


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(n: int, generator, device: torch.device) -> torch.Tensor:
    """``n`` uniforms in [0, 1), float32, drawn from ``generator`` and placed on ``device``."""
    return torch.rand(n, generator=generator, device=_draw_device(generator, device)).to(device)


def sample_beta(
    n: int, alpha: float, generator: torch.Generator | None = None, device: str | torch.device | None = None
) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) as ``G1 / (G1 + G2)`` with ``G ~ Gamma(alpha)``, float32.

    Deterministic given ``generator`` (torch's Gamma sampler takes it; ``torch.distributions``
    does not). Both gammas may underflow to 0 for a tiny alpha: lambda is then 0 or 1, which is
    the Beta's limit as alpha -> 0.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not alpha > 0:
        raise PipelineError(f"augment.mixup_alpha must be > 0, got {alpha}")
    draw = _draw_device(generator, device)
    conc = torch.full((2, n), float(alpha), dtype=torch.float32, device=draw)
    g = torch._standard_gamma(conc, generator=generator)
    total = g[0] + g[1]
    lam = torch.where(
        total > 0, g[0] / total.clamp_min(torch.finfo(torch.float32).tiny), (g[0] >= g[1]).to(torch.float32)
    )
    return lam.clamp_(0.0, 1.0).to(device)


def mix(
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    lam: torch.Tensor,
    domain: str = "power",
    n_frames_i: torch.Tensor | None = None,
    n_frames_j: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix fbanks ``x_i``, ``x_j`` ``[B, T, F]`` with per-sample weights ``lam [B]`` (weight of ``x_i``).

    ``power``: ``log(lam^2 exp(x_i) + (1 - lam)^2 exp(x_j))``, computed as
    ``logaddexp(x_i + 2 log lam, x_j + 2 log(1 - lam))`` (stable, no overflow; lam = 1 gives
    ``x_i`` and lam = 0 gives ``x_j`` exactly). ``logmel``: ``lam x_i + (1 - lam) x_j`` (as
    ``lerp(x_j, x_i, lam)``). A new tensor of ``x_i``'s dtype; the inputs are not modified.

    With ``n_frames_i``/``n_frames_j`` ``[B]`` (real frames before the zero padding) the paper's
    waveform semantics hold at the edges: the mix keeps ``x_i``'s length (frames past
    ``n_frames_i`` keep ``x_i``'s padding), and where ``x_j`` is padding it adds no power
    (power domain: ``x_i + 2 log lam``, i.e. mixing with silence). Without them every frame is
    mixed as is (two zero padded frames give ``log(lam^2 + (1 - lam)^2)`` in the power domain).
    """
    if domain not in MIXUP_DOMAINS:
        raise PipelineError(f"augment.mixup_domain must be one of {', '.join(MIXUP_DOMAINS)}, got {domain!r}")
    out_dtype = x_i.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    lam = lam.to(device=x_i.device, dtype=work).reshape(-1, 1, 1)
    frames = torch.arange(x_i.shape[1], device=x_i.device).reshape(1, -1, 1)
    real_i = None if n_frames_i is None else frames < n_frames_i.to(x_i.device).reshape(-1, 1, 1)
    if domain == "power":
        # Per-frame log weights [B, T, 1], broadcast over bins, so the whole mix is three passes:
        # x_i + bias_i, x_j + bias_j, logaddexp. Past x_i's end: bias_i = 0 and bias_j = -inf
        # (the result is x_i's padding); where x_j is padding: bias_j = -inf (mixing with silence).
        log_lam, log_rest = torch.log(lam), torch.log1p(-lam)
        bias_i = (2.0 * log_lam).expand(-1, x_i.shape[1], 1)
        bias_j = (2.0 * log_rest).expand(-1, x_i.shape[1], 1)
        silent_j = torch.zeros_like(bias_j, dtype=torch.bool)
        if n_frames_j is not None:
            silent_j = silent_j | (frames >= n_frames_j.to(x_i.device).reshape(-1, 1, 1))
        if real_i is not None:
            bias_i = torch.where(real_i, bias_i, torch.zeros_like(bias_i))
            silent_j = silent_j | ~real_i
        bias_j = bias_j.masked_fill(silent_j, float("-inf"))
        mixed = x_i.to(work) + bias_i
        torch.logaddexp(mixed, x_j.to(work) + bias_j, out=mixed)
    else:
        xi = x_i.to(work)
        mixed = torch.lerp(x_j.to(work), xi, lam)
        if real_i is not None:
            mixed = torch.where(real_i, mixed, xi)
    return mixed.to(out_dtype)


def mixup(
    fbank: torch.Tensor,
    labels: torch.Tensor,
    prob: float,
    alpha: float,
    domain: str = "power",
    generator: torch.Generator | None = None,
    n_frames: torch.Tensor | None = None,
    return_info: bool = False,
    inplace: bool = False,
    partner: tuple | None = None,
):
    """In-batch mixup. Returns new ``(fbank, labels)`` (plus ``info`` when ``return_info``).
    With ``inplace`` (on CPU) the mixed rows are written into ``fbank`` itself, saving a copy
    of the batch; the caller must own it.

    Sample ``i`` is mixed, with probability ``prob``, with sample ``j = (i + k) % B``,
    ``k`` uniform in ``1..B-1`` (so ``j != i``), with ``lam ~ Beta(alpha, alpha)`` as the weight of
    sample ``i``; its labels become ``lam y_i + (1 - lam) y_j``. Unselected samples come back
    unchanged (their lambda is 1, which ``mix`` maps to ``x_i`` exactly). A batch of one is
    returned as is (there is no partner). The same random numbers are drawn whatever ``prob``
    is. ``info`` = dict(selected [B] bool, partner [B] long, lam [B] float32, 1 where unselected).

    ``partner`` = ``(fbank_j [M, T, F], labels_j [M, C], n_frames_j [M], selected [B] bool)``: partners
    drawn by the loader (``augment.mixup_partner: dataset``) for the M selected samples, in batch order;
    the k-th selected sample is mixed with row k, and only lambda is drawn (``prob`` was the loader's).
    ``info["partner"]`` then gives each sample's row of the partners (-1 where not selected).
    """
    if fbank.ndim != 3 or labels.ndim != 2 or labels.shape[0] != fbank.shape[0]:
        raise PipelineError(
            f"mixup needs fbank [B, T, F] and labels [B, C], got {tuple(fbank.shape)} and {tuple(labels.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise PipelineError(f"augment.mixup must be a probability in [0, 1], got {prob}")
    if domain not in MIXUP_DOMAINS:
        raise PipelineError(f"augment.mixup_domain must be one of {', '.join(MIXUP_DOMAINS)}, got {domain!r}")
    device, b = fbank.device, fbank.shape[0]
    if partner is not None:
        return _mixup_with(fbank, labels, partner, alpha, domain, generator, n_frames, return_info, inplace)
    if b < 2:
        info = dict(
            selected=torch.zeros(b, dtype=torch.bool, device=device),
            partner=torch.arange(b, device=device),
            lam=torch.ones(b, device=device),
        )
        return (fbank, labels, info) if return_info else (fbank, labels)
    draw = _draw_device(generator, device)
    selected = _rand(b, generator, device) < prob
    offset = torch.randint(1, b, (b,), generator=generator, device=draw).to(device)
    lam = sample_beta(b, alpha, generator, device)
    partner = (torch.arange(b, device=device) + offset) % b
    lam = torch.where(selected, lam, torch.ones_like(lam))
    nf_i = n_frames.to(device) if n_frames is not None else None
    if device.type == "cpu":
        # On the host, mix only the selected rows: half the transcendental work at prob 0.5.
        # (On an accelerator, boolean indexing would force a host sync; mixing every row is cheaper.)
        rows = selected.nonzero().squeeze(1)
        out = fbank if inplace else fbank.clone()
        if len(rows):
            out[rows] = mix(
                fbank[rows],
                fbank[partner[rows]],
                lam[rows],
                domain,
                n_frames_i=None if nf_i is None else nf_i[rows],
                n_frames_j=None if nf_i is None else nf_i[partner[rows]],
            )
    else:
        out = mix(
            fbank, fbank[partner], lam, domain, n_frames_i=nf_i, n_frames_j=None if nf_i is None else nf_i[partner]
        )
        if domain == "logmel":  # lerp at weight 1 is x_i in practice, but not by contract
            out = torch.where(selected.reshape(-1, 1, 1), out, fbank)
    y = labels.to(labels.dtype if labels.is_floating_point() else torch.float32)
    lam_y = lam.to(y.dtype).reshape(-1, 1)
    y_out = torch.where(selected.reshape(-1, 1), lam_y * y + (1.0 - lam_y) * y[partner], y)
    if return_info:
        return out, y_out, dict(selected=selected, partner=partner, lam=lam)
    return out, y_out


def _mixup_with(fbank, labels, partner, alpha, domain, generator, n_frames, return_info, inplace):
    """``mixup`` with the partners the loader read (see ``mixup``'s ``partner``)."""
    x_j, y_j, nf_j, selected = partner
    device, b = fbank.device, fbank.shape[0]
    selected = selected.to(device=device, dtype=torch.bool)
    if tuple(x_j.shape[1:]) != tuple(fbank.shape[1:]) or selected.shape != (b,) or y_j.shape[0] != x_j.shape[0]:
        raise PipelineError(f"mixup partners of shape {tuple(x_j.shape)} for a batch of {tuple(fbank.shape)}")
    lam = torch.where(selected, sample_beta(b, alpha, generator, device), torch.ones(b, device=device))
    # each sample's row of the partners: the running count of selected samples (no host sync)
    row_of = torch.where(selected, torch.cumsum(selected.long(), 0) - 1, torch.full_like(lam, -1, dtype=torch.long))
    y = labels.to(labels.dtype if labels.is_floating_point() else torch.float32)
    info = dict(selected=selected, partner=row_of, lam=lam)
    if x_j.shape[0] == 0:  # nobody mixed
        out = fbank if inplace else fbank.clone()
        return (out, y, info) if return_info else (out, y)
    nf_i = n_frames.to(device) if n_frames is not None else None
    nf_j = nf_j.to(device) if n_frames is not None else None
    take = row_of.clamp_min(0)  # unselected rows take partner 0, and their mix is discarded
    if device.type == "cpu":  # as in mixup: on the host, mix only the selected rows
        rows = selected.nonzero().squeeze(1)
        out = fbank if inplace else fbank.clone()
        out[rows] = mix(
            fbank[rows],
            x_j,
            lam[rows],
            domain,
            n_frames_i=None if nf_i is None else nf_i[rows],
            n_frames_j=nf_j,
        )
    else:
        mixed = mix(fbank, x_j[take], lam, domain, nf_i, None if nf_j is None else nf_j[take])
        out = torch.where(selected.reshape(-1, 1, 1), mixed, fbank)
    lam_y = lam.to(y.dtype).reshape(-1, 1)
    y_out = torch.where(selected.reshape(-1, 1), lam_y * y + (1.0 - lam_y) * y_j.to(y.dtype)[take], y)
    return (out, y_out, info) if return_info else (out, y_out)


def _band(size: int, max_width: int, u_width: torch.Tensor, u_start: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[B, size]`` bool mask of one band, from two uniforms per sample, with torchaudio's
    arithmetic (``torchaudio.functional.mask_along_axis``, float32): the width ``v = u_width * max_width``
    stays continuous for the start ``v0 = u_start * (size - v)``; the band is ``[trunc(v0), trunc(v0) +
    trunc(v))`` (``.long()``: a start below 0 when ``max_width > size`` truncates toward 0, as there)."""
    value = u_width * max_width
    min_value = u_start * (size - value)
    start = min_value.long().reshape(-1, 1)
    end = start + value.long().reshape(-1, 1)
    idx = torch.arange(size, device=u_width.device).reshape(1, -1)
    return (idx >= start) & (idx < end)


def _masks(fbank: torch.Tensor, freqm: int, timem: int, generator):
    """The time ``[B, T]`` and frequency ``[B, F]`` masks. The uniforms are drawn as one ``[B, k]``
    float32 tensor, per sample (row) in the official order: frequency width, frequency start, then time
    width, time start, only for the masks that are on (``k`` = 0, 2 or 4), as torchaudio draws them
    (``torch.rand(1)`` each) when the official loader masks one clip after another. On CPU a
    generator seeded s thus gives the masks the official loader draws with ``torch.manual_seed(s)``."""
    if fbank.ndim != 3:
        raise PipelineError(f"spec_augment needs fbank [B, T, F], got {tuple(fbank.shape)}")
    if freqm < 0 or timem < 0:
        raise PipelineError(f"augment.freqm and augment.timem must be >= 0, got {freqm}, {timem}")
    b, t, f = fbank.shape
    k = 2 * (freqm > 0) + 2 * (timem > 0)
    u = torch.rand((b, k), generator=generator, device=_draw_device(generator, fbank.device)).to(fbank.device)
    no_time = torch.zeros(b, t, dtype=torch.bool, device=fbank.device)
    no_freq = torch.zeros(b, f, dtype=torch.bool, device=fbank.device)
    freq_mask = _band(f, freqm, u[:, 0], u[:, 1]) if freqm > 0 else no_freq
    time_mask = _band(t, timem, u[:, k - 2], u[:, k - 1]) if timem > 0 else no_time
    return time_mask, freq_mask


def spec_augment(
    fbank: torch.Tensor,
    freqm: int,
    timem: int,
    generator: torch.Generator | None = None,
    return_masks: bool = False,
    inplace: bool = False,
):
    """One frequency mask (< ``freqm`` bins) and one time mask (< ``timem`` frames) per sample, value 0,
    drawn as torchaudio's ``FrequencyMasking``/``TimeMasking`` on each clip (see ``_band``, ``_masks``).

    ``fbank [B, T, F]``. ``freqm`` / ``timem`` of 0 turn that mask off (and draw nothing for it, as
    the official loader skips it). Returns a new tensor unless ``inplace``; with ``return_masks`` also
    the bool masks ``time [B, T]`` and ``freq [B, F]``.
    """
    time_mask, freq_mask = _masks(fbank, freqm, timem, generator)
    out = fbank if inplace else fbank.clone()
    # Multiplying by 0/1 keep-masks is several times faster than masked_fill_ on CPU, and exact
    # for finite inputs (fbanks and their mixes are finite).
    if timem > 0:
        out.mul_((~time_mask).to(out.dtype).unsqueeze(2))
    if freqm > 0:
        out.mul_((~freq_mask).to(out.dtype).unsqueeze(1))
    return (out, time_mask, freq_mask) if return_masks else out


def normalise(fbank: torch.Tensor, mean: Number, std: Number, inplace: bool = False) -> torch.Tensor:
    """``(x - mean) / std`` (the paper: -4.6476 / 4.5699; ours from the training split)."""
    if inplace:
        return fbank.sub_(mean).div_(std)
    return (fbank - mean) / std


def augment_batch(
    fbank: torch.Tensor,
    labels: torch.Tensor,
    cfg,
    norm_mean: Number,
    norm_std: Number,
    generator: torch.Generator | None = None,
    n_frames: torch.Tensor | None = None,
    partner: tuple | None = None,
):
    """Training batch: mixup -> SpecAugment -> normalisation. Returns new ``(fbank float32, labels float32)``.

    ``cfg`` has ``freqm, timem, mixup, mixup_alpha, mixup_domain`` (the ``augment`` params
    section). ``fbank`` may be float16 as stored; it is promoted to float32 first. The inputs
    are never modified. ``n_frames [B]`` (optional) keeps the zero padding exact under
    power-domain mixup (see ``mix``). With ``cfg.mixup == 0`` no mixup numbers are drawn. ``partner``:
    the mixup partners the loader drew from the whole training split (see ``mixup``).
    """
    work = torch.promote_types(fbank.dtype, torch.float32)
    x = fbank.to(work)
    y = labels.to(torch.float32)
    if cfg.mixup > 0:  # a converted (float16 -> float32) batch is ours to mix in place
        x, y = mixup(
            x,
            y,
            cfg.mixup,
            cfg.mixup_alpha,
            cfg.mixup_domain,
            generator,
            n_frames=n_frames,
            inplace=x is not fbank,
            partner=partner,
        )
    owned = x is not fbank  # a batch of one comes back from mixup as is
    x = spec_augment(x, cfg.freqm, cfg.timem, generator, inplace=owned)
    return normalise(x, norm_mean, norm_std, inplace=True), y


def prepare_eval_batch(fbank: torch.Tensor, mean: Number, std: Number) -> torch.Tensor:
    """Evaluation batch: normalisation only (float32, a new tensor)."""
    return normalise(fbank.to(torch.promote_types(fbank.dtype, torch.float32)), mean, std)
