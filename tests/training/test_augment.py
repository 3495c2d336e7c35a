"""Batched training augmentation: mixup (power / log-mel domain), SpecAugment, normalisation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchaudio

from pipeline.core.errors import PipelineError
from pipeline.training.augment import (
    augment_batch,
    make_generator,
    mix,
    mixup,
    normalise,
    prepare_eval_batch,
    sample_beta,
    spec_augment,
)

MEAN, STD = -4.6476, 4.5699
BETA_10_STD = math.sqrt(1 / 84)  # std of Beta(10, 10) = sqrt(a^2 / ((2a)^2 (2a + 1)))


def cfg(**kw):
    base = dict(freqm=48, timem=192, mixup=0.5, mixup_alpha=10.0, mixup_domain="power")
    return SimpleNamespace(**{**base, **kw})


def batch(b=8, t=300, f=128, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g) * 4.5 - 4.6
    y = (torch.rand(b, c, generator=g) < 0.3).float()
    return x, y


def identity_labels(x):
    """One-hot labels, sample i -> class i: the partner and lambda can be read off the mixed labels."""
    return torch.eye(x.shape[0])


def recover_lam(out, x, partner):
    """lam per sample from a log-mel mix out = lam x + (1 - lam) x[partner] (least squares)."""
    d = (x - x[partner]).flatten(1).double()
    r = (out - x[partner]).flatten(1).double()
    return (d * r).sum(1) / (d * d).sum(1)


# ---------------------------------------------------------------- shapes, identities, errors


def test_shapes_and_dtypes_preserved():
    x, y = batch()
    out, yo = augment_batch(x, y, cfg(mixup=1.0), MEAN, STD, make_generator(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert yo.shape == y.shape and yo.dtype == torch.float32
    for domain in ("power", "logmel"):
        xh, yh = mixup(x.half(), y, 1.0, 10.0, domain, make_generator(1))
        assert xh.dtype == torch.float16 and xh.shape == x.shape and torch.isfinite(xh).all()
    assert spec_augment(x, 48, 192, make_generator(2)).shape == x.shape
    assert augment_batch(x.half(), y.to(torch.uint8), cfg(), MEAN, STD, make_generator(0))[0].dtype == torch.float32


def test_no_mixup_no_masks_is_exactly_the_normalised_input():
    x, y = batch()
    out, yo = augment_batch(x, y, cfg(mixup=0.0, freqm=0, timem=0), MEAN, STD, make_generator(0))
    assert torch.equal(out, (x - MEAN) / STD)
    assert torch.equal(out, prepare_eval_batch(x, MEAN, STD))
    assert torch.equal(out, normalise(x, MEAN, STD))
    assert torch.equal(yo, y)
    # mixup itself with probability 0 is the identity too, whatever the domain
    for domain in ("power", "logmel"):
        xo, yo = mixup(x, y, 0.0, 10.0, domain, make_generator(0))
        assert torch.equal(xo, x) and torch.equal(yo, y)


def test_bad_arguments_are_clear_errors():
    x, y = batch(b=4)
    with pytest.raises(PipelineError, match="mixup_domain"):
        mixup(x, y, 1.0, 10.0, "waveform", make_generator(0))
    with pytest.raises(PipelineError, match="probability"):
        mixup(x, y, 1.5, 10.0, "power", make_generator(0))
    with pytest.raises(PipelineError, match="alpha"):
        sample_beta(4, 0.0, make_generator(0))
    with pytest.raises(PipelineError):
        spec_augment(x[0], 4, 4, make_generator(0))


@pytest.mark.parametrize("b", [1, 8])
@pytest.mark.parametrize("mixup_p", [0.0, 1.0])
def test_inputs_are_never_modified(b, mixup_p):
    x, y = batch(b=b, t=50, f=16)
    x0, y0 = x.clone(), y.clone()
    out, yo = augment_batch(x, y, cfg(mixup=mixup_p, freqm=8, timem=20), MEAN, STD, make_generator(0))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert out.data_ptr() != x.data_ptr()


def test_batch_of_one_is_left_alone():
    x, y = batch(b=1)
    xo, yo = mixup(x, y, 1.0, 10.0, "power", make_generator(0))
    assert torch.equal(xo, x) and torch.equal(yo, y)


# ---------------------------------------------------------------- mixup


@pytest.mark.parametrize("domain", ["power", "logmel"])
def test_probability_one_mixes_every_sample_with_another(domain):
    x, _ = batch(b=16)
    y = identity_labels(x)
    xo, yo, info = mixup(x, y, 1.0, 10.0, domain, make_generator(3), return_info=True)
    assert info["selected"].all()
    assert (info["partner"] != torch.arange(16)).all()
    assert ((xo - x).abs().flatten(1).amax(1) > 0.01).all()
    # every row of the labels is a two-class mixture: lam on itself, 1 - lam on its partner
    diag = yo.diagonal()
    off = yo.clone().fill_diagonal_(0)
    assert torch.equal(off.argmax(1), info["partner"])
    torch.testing.assert_close(diag + off.sum(1), torch.ones(16))
    assert ((diag > 0) & (diag < 1)).all()


def test_unselected_samples_are_bit_identical():
    x, y = batch(b=64, t=50, f=16)
    for domain in ("power", "logmel"):
        xo, yo, info = mixup(x, y, 0.5, 10.0, domain, make_generator(4), return_info=True)
        sel = info["selected"]
        assert 10 < int(sel.sum()) < 54
        assert torch.equal(xo[~sel], x[~sel]) and torch.equal(yo[~sel], y[~sel])
        assert ((xo[sel] - x[sel]).abs().flatten(1).amax(1) > 0).all()


def test_labels_mix_with_the_same_lambda_as_the_fbank():
    """Log-mel domain: recover lam from x_mixed = lam x_i + (1 - lam) x_j, compare with the labels."""
    x, _ = batch(b=32, t=40, f=16)
    y = identity_labels(x)
    xo, yo = mixup(x, y, 1.0, 10.0, "logmel", make_generator(5))
    diag = yo.diagonal()
    partner = yo.clone().fill_diagonal_(0).argmax(1)  # read the partner off the labels
    lam = recover_lam(xo, x, partner)
    torch.testing.assert_close(lam.float(), diag, atol=1e-5, rtol=0)
    torch.testing.assert_close(xo, diag.reshape(-1, 1, 1) * x + (1 - diag.reshape(-1, 1, 1)) * x[partner])


def test_lambda_distribution_is_beta_alpha_alpha():
    x, _ = batch(b=4000, t=4, f=4)
    y = identity_labels(x)
    xo, yo = mixup(x, y, 1.0, 10.0, "logmel", make_generator(6))
    lam = yo.diagonal().double()
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.std().item() - BETA_10_STD) < 0.006
    big = sample_beta(200_000, 10.0, make_generator(7))
    assert abs(big.mean().item() - 0.5) < 0.002
    assert abs(big.std().item() - BETA_10_STD) < 0.001
    # another alpha, as a check of the Beta itself: Beta(0.4, 0.4) has std sqrt(1 / (4 * 1.8))
    small = sample_beta(200_000, 0.4, make_generator(8))
    assert ((small >= 0) & (small <= 1)).all()
    assert abs(small.std().item() - math.sqrt(1 / 7.2)) < 0.003
    # mixing probability
    sel = mixup(x, y, 0.5, 10.0, "logmel", make_generator(9), return_info=True)[2]["selected"]
    assert abs(sel.float().mean().item() - 0.5) < 0.03


def test_power_domain_formula_and_edges():
    g = torch.Generator().manual_seed(10)
    xi = torch.randn(5, 20, 8, generator=g) * 4 - 5
    xj = torch.randn(5, 20, 8, generator=g) * 4 - 5
    lam = torch.tensor([0.0, 1.0, 0.3, 0.5, 0.999])
    out = mix(xi, xj, lam, "power")
    l64 = lam.double().reshape(-1, 1, 1)
    ref = torch.log(l64**2 * xi.double().exp() + (1 - l64) ** 2 * xj.double().exp())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(out[0], xj[0]) and torch.equal(out[1], xi[1])  # lam 0 / 1 are exact
    out_l = mix(xi, xj, lam, "logmel")
    assert torch.equal(out_l[1], xi[1])
    torch.testing.assert_close(out_l[0], xj[0])
    # very loud / very quiet values stay finite (no exp overflow)
    assert torch.isfinite(mix(xi + 200, xj - 200, lam, "power")).all()


def test_padding_semantics_with_n_frames():
    """With n_frames the mix keeps x_i's length and x_j's padding adds no power (mixing with silence)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 10, 4, generator=g)
    n = torch.tensor([6, 3])
    x[0, 6:] = 0
    x[1, 3:] = 0
    lam = torch.tensor([0.6, 0.6])
    out = mix(x, x.flip(0), lam, "power", n_frames_i=n, n_frames_j=n.flip(0))
    assert torch.equal(out[0, 6:], torch.zeros(4, 4))  # past sample 0's length: padding stays
    torch.testing.assert_close(out[0, 3:6], x[0, 3:6] + 2 * math.log(0.6))  # partner is padding there
    ref = torch.logaddexp(x[0, :3] + 2 * math.log(0.6), x[1, :3] + 2 * math.log(0.4))
    torch.testing.assert_close(out[0, :3], ref)
    torch.testing.assert_close(out[1, :3], torch.logaddexp(x[1, :3] + 2 * math.log(0.6), x[0, :3] + 2 * math.log(0.4)))
    assert torch.equal(out[1, 3:], torch.zeros(7, 4))
    # through mixup and augment_batch
    y = torch.eye(2)
    xo, _ = mixup(x, y, 1.0, 10.0, "power", make_generator(0), n_frames=n)
    assert torch.equal(xo[0, 6:], x[0, 6:]) and torch.equal(xo[1, 3:], x[1, 3:])
    augment_batch(x, y, cfg(freqm=2, timem=2, mixup=1.0), MEAN, STD, make_generator(0), n_frames=n)


# ---------------------------------------------------------------- SpecAugment


def band_of(mask_1d: torch.Tensor):
    """(start, width) of the single contiguous True band of a 1-D bool mask; width 0 -> start None."""
    idx = torch.nonzero(mask_1d).flatten()
    if idx.numel() == 0:
        return None, 0
    assert idx[-1] - idx[0] + 1 == idx.numel(), "mask is not one contiguous band"
    return int(idx[0]), int(idx.numel())


def test_masks_one_contiguous_band_per_axis_width_below_limit():
    b, t, f, freqm, timem = 600, 300, 128, 48, 192
    x = torch.rand(b, t, f) + 0.5  # no zeros before masking
    out, tmask, fmask = spec_augment(x, freqm, timem, make_generator(12), return_masks=True)
    zero = out == 0
    assert torch.equal(zero, tmask[:, :, None] | fmask[:, None, :])
    assert torch.equal(out[~zero], x[~zero])
    # read the bands back off the output itself
    time_zero, freq_zero = zero.all(2), zero.all(1)
    assert torch.equal(time_zero, tmask) and torch.equal(freq_zero, fmask)
    tw, fw = [], []
    for i in range(b):
        _, w_t = band_of(time_zero[i])
        _, w_f = band_of(freq_zero[i])
        tw.append(w_t)
        fw.append(w_f)
    tw, fw = np.array(tw), np.array(fw)
    assert tw.max() < timem and fw.max() < freqm
    assert tw.min() == 0 and fw.min() == 0 and tw.max() > 0.9 * timem and fw.max() > 0.9 * freqm
    assert abs(tw.mean() - (timem - 1) / 2) < 0.1 * timem and abs(fw.mean() - (freqm - 1) / 2) < 0.1 * freqm
    # band starts cover the axis (start uniform in [0, size - width))
    starts = [band_of(freq_zero[i])[0] for i in range(b) if fw[i] > 0]
    assert min(starts) < 5 and max(starts) > f - freqm - 5


def test_masks_off_and_limits_larger_than_the_axis():
    x = torch.rand(16, 20, 8) + 0.5
    assert torch.equal(spec_augment(x, 0, 0, make_generator(0)), x)
    out = spec_augment(x, 0, 5, make_generator(0))
    assert not (out == 0).all(1).any()  # no frequency band
    out = spec_augment(x, 1000, 1000, make_generator(0))  # wider than the axes: still one band, inside
    assert out.shape == x.shape


def official_masking(x: torch.Tensor, freqm: int, timem: int) -> torch.Tensor:
    """The official loader's SpecAugment (audioset_dataset.py, `__getitem__`), clip after clip: the
    [T, F] fbank transposed to [1, F, T], torchaudio's FrequencyMasking(freqm) then TimeMasking(timem)
    (iid_masks False, each skipped when 0), transposed back."""
    freq, time = torchaudio.transforms.FrequencyMasking(freqm), torchaudio.transforms.TimeMasking(timem)
    out = []
    for clip in x:
        spec = clip.T.unsqueeze(0)
        if freqm != 0:
            spec = freq(spec)
        if timem != 0:
            spec = time(spec)
        out.append(spec.squeeze(0).T)
    return torch.stack(out)


# (batch, frames, bins, freqm, timem): the paper's shape, the demo's, masks off, limits wider than the axis
MASK_SHAPES = [
    (6, 1056, 128, 48, 192),
    (9, 150, 64, 12, 30),
    (7, 40, 16, 0, 10),
    (7, 40, 16, 5, 0),
    (5, 20, 8, 30, 64),
    (4, 33, 9, 1, 2),
]


@pytest.mark.parametrize("shape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_masks_equal_torchaudios_for_the_same_seed(shape):
    """A CPU generator seeded s gives, element for element, the masks of torchaudio's
    FrequencyMasking/TimeMasking applied clip by clip (as the official loader) after torch.manual_seed(s):
    the same uniform draws, in the same order, through the same float32 arithmetic."""
    b, t, f, freqm, timem = shape
    x = torch.rand(b, t, f, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros before masking
    for seed in range(5):
        ours, tmask, fmask = spec_augment(x, freqm, timem, make_generator(seed), return_masks=True)
        torch.manual_seed(seed)
        official = official_masking(x, freqm, timem)
        assert torch.equal(ours, official), f"seed {seed}"
        assert torch.equal(official == 0, tmask[:, :, None] | fmask[:, None, :])


def test_masks_equal_torchaudios_for_the_same_draws_at_the_edges(monkeypatch):
    """The same uniforms fed to both (torch.rand replaced by a queue), chosen at the edges: width 0
    (u = 0), the widest (u just below 1: freqm - 1), starts at 0 and at the last possible bin, and
    draws just either side of an integer width, where a width kept continuous (torchaudio's
    `size - v`) and a floored one (`size - floor(v)`) give different starts."""
    below_one = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
    t, f, freqm, timem = 300, 128, 48, 192
    edges = [0.0, below_one, 0.5, 1 / 48, 1 / 192, 0.999, 0.25]
    rows = [[fw, fs, tw, ts] for fw in edges for fs in edges[:3] for tw in edges[:3] for ts in edges[:3]]
    rows += [[10.9 / 48, below_one, 150.9 / 192, below_one], [10.9 / 48, 0.97, 150.9 / 192, 0.9]]
    draws = torch.tensor(rows, dtype=torch.float32)
    x = torch.rand(len(rows), t, f, generator=torch.Generator().manual_seed(2)) + 0.5
    real_rand = torch.rand

    def feed(queue):
        def rand(*size, generator=None, device=None, **kw):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
            n = math.prod(shape)
            out, queue[:] = torch.tensor(queue[:n], dtype=torch.float32).reshape(shape), queue[n:]
            return out.to(device) if device is not None else out

        return rand

    queue = draws.flatten().tolist()
    monkeypatch.setattr(torch, "rand", feed(queue))
    ours, tmask, fmask = spec_augment(x, freqm, timem, make_generator(0), return_masks=True)
    assert not queue
    queue = draws.flatten().tolist()
    monkeypatch.setattr(torch, "rand", feed(queue))
    official = official_masking(x, freqm, timem)
    assert not queue
    monkeypatch.setattr(torch, "rand", real_rand)
    assert torch.equal(ours, official)
    widths = fmask.sum(1)
    assert widths.min() == 0 and widths.max() == freqm - 1 and tmask.sum(1).max() == timem - 1
    starts = [band_of(m)[0] for m in fmask if m.any()]
    assert min(starts) == 0 and max(starts) == f - 2  # width 1 from bin 126
    # v = 10.9, u = 0.97: floor(0.97 * (128 - 10.9)) = 113, where a floored width gives floor(0.97 * 118) = 114
    assert band_of(fmask[-1]) == (113, 10) and band_of(tmask[-1]) == (int(0.9 * (300 - 150.9)), 150)
    # start < size - v, so (in torchaudio too) a band never covers the axis's last bin
    assert not fmask[:, -1].any() and not tmask[:, -1].any()


def test_masked_value_is_zero_before_normalisation():
    x, y = batch(b=16)
    out, _ = augment_batch(x, y, cfg(mixup=0.0), MEAN, STD, make_generator(13))
    masked = spec_augment(x, 48, 192, make_generator(13))
    assert torch.equal(out, (masked - MEAN) / STD)
    z = masked == 0
    assert z.any()
    assert torch.allclose(out[z], torch.full_like(out[z], -MEAN / STD))


# ---------------------------------------------------------------- determinism, device


def test_deterministic_for_a_seed_and_seeds_differ():
    x, y = batch(b=16)
    a = augment_batch(x, y, cfg(mixup=0.5), MEAN, STD, make_generator(42))
    b = augment_batch(x, y, cfg(mixup=0.5), MEAN, STD, make_generator(42))
    c = augment_batch(x, y, cfg(mixup=0.5), MEAN, STD, make_generator(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[1], c[1])
    # consecutive batches from one generator differ
    g = make_generator(42)
    first = augment_batch(x, y, cfg(), MEAN, STD, g)[0]
    second = augment_batch(x, y, cfg(), MEAN, STD, g)[0]
    assert not torch.equal(first, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_a_cpu_generator_matches_cpu():
    x, y = batch(b=16)
    cpu = augment_batch(x, y, cfg(mixup=1.0), MEAN, STD, make_generator(5))
    gpu = augment_batch(x.cuda(), y.cuda(), cfg(mixup=1.0), MEAN, STD, make_generator(5))
    assert gpu[0].is_cuda
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
    g = make_generator(5, "cuda")
    a = augment_batch(x.cuda(), y.cuda(), cfg(mixup=1.0), MEAN, STD, g)
    b = augment_batch(x.cuda(), y.cuda(), cfg(mixup=1.0), MEAN, STD, make_generator(5, "cuda"))
    assert torch.equal(a[0], b[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_loader_partners_matches_cpu():
    x, y = batch(b=16, t=60, f=32, seed=4)
    xj, yj = batch(b=16, t=60, f=32, seed=5)
    frames, nj = torch.full((16,), 60), torch.randint(10, 61, (16,), generator=torch.Generator().manual_seed(6))
    selected = torch.arange(16) % 3 == 0
    xj, yj, nj = xj[selected], yj[selected], nj[selected]
    c = cfg(freqm=8, timem=20, mixup=0.5)
    cpu = augment_batch(x, y, c, MEAN, STD, make_generator(7), frames, partner=(xj, yj, nj, selected))
    gpu = augment_batch(
        x.cuda(),
        y.cuda(),
        c,
        MEAN,
        STD,
        make_generator(7),
        frames.cuda(),
        partner=(xj.cuda(), yj.cuda(), nj.cuda(), selected.cuda()),
    )
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])


# ---------------------------------------------------------------- fidelity against waveform mixing

SR = 16000
SECONDS = 2.0


def _pink_like(rng, n, exponent):
    """Noise with power spectrum ~ 1 / f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    freqs[0] = freqs[1]
    wave = np.fft.irfft(spec / freqs ** (exponent / 2), n)
    return wave / np.abs(wave).max()


def make_signal(kind, rng):
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    if kind == "tone":
        w = np.sin(2 * np.pi * rng.uniform(200, 4000) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 1500), rng.uniform(2000, 7000)
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        w = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * SECONDS)))
    elif kind == "harmonic":
        f0 = rng.uniform(100, 500)
        w = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9) if k * f0 < SR / 2)
    elif kind in ("white", "pink", "brown"):
        w = _pink_like(rng, n, {"white": 0, "pink": 1, "brown": 2}[kind])
    elif kind == "clicks":
        w = np.zeros(n)
        period = int(SR / rng.uniform(4, 20))
        for start in range(int(rng.integers(0, period)), n - 32, period):
            w[start : start + 32] += np.hanning(32) * rng.choice([-1, 1])
    elif kind == "am":
        w = (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(2, 12) * t)) * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    elif kind == "fm":
        fc, fm, dev = rng.uniform(500, 3000), rng.uniform(1, 8), rng.uniform(50, 400)
        w = np.sin(2 * np.pi * fc * t + dev / fm * np.sin(2 * np.pi * fm * t))
    else:
        raise ValueError(kind)
    w = w / np.abs(w).max() * rng.uniform(0.05, 0.8)  # levels differ between sounds
    return torch.from_numpy(w.astype(np.float32))


def kaldi_fbank(w):
    """Exactly the features of docs/recipe.md (without padding)."""
    return torchaudio.compliance.kaldi.fbank(
        (w - w.mean()).unsqueeze(0),
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )


def test_power_domain_mixup_is_closer_to_the_waveform_mix_than_logmel_mixing():
    kinds = ["tone", "chirp", "harmonic", "white", "pink", "brown", "clicks", "am", "fm"]
    rng = np.random.default_rng(2021)
    lams = sample_beta(40, 10.0, make_generator(2021))
    err = {"power": [], "logmel": []}
    for p in range(40):
        ka, kb = rng.choice(kinds, 2)
        a, b = make_signal(ka, rng), make_signal(kb, rng)
        lam = float(lams[p])
        fa, fb = kaldi_fbank(a)[None], kaldi_fbank(b)[None]
        truth = kaldi_fbank(lam * a + (1 - lam) * b)[None]
        for domain in err:
            err[domain].append((mix(fa, fb, torch.tensor([lam]), domain) - truth).abs().mean().item())
    power, logmel = float(np.mean(err["power"])), float(np.mean(err["logmel"]))
    print(f"\nmixup fidelity vs fbank of the mixed wave, 40 pairs, MAE: power {power:.3f}, logmel {logmel:.3f}")
    assert power < 0.5 * logmel
    assert power < 0.5
    # pair by pair, too: power-domain mixing is the better approximation in the large majority
    assert np.mean(np.array(err["power"]) < np.array(err["logmel"])) > 0.8


@pytest.mark.parametrize("domain", ["power", "logmel"])
def test_loader_partners_mix_where_selected_with_the_same_lambda_as_the_labels(domain):
    """augment.mixup_partner: dataset: the loader brings each sample's partner (drawn from the whole
    training split) and whether it is mixed; the fbank and the labels mix with one lambda ~ Beta(10, 10)."""
    x, y = batch(b=16, t=40, f=16, seed=1)
    xj, yj = batch(b=16, t=40, f=16, seed=2)
    frames = torch.full((16,), 40)
    nj = torch.randint(10, 41, (16,), generator=torch.Generator().manual_seed(3))
    selected = torch.arange(16) % 2 == 0
    xj, yj, nj = xj[selected], yj[selected], nj[selected]  # the loader brings the selected ones' partners only
    xo, yo, info = mixup(
        x, y, 0.5, 10.0, domain, make_generator(11), n_frames=frames, partner=(xj, yj, nj, selected), return_info=True
    )
    lam = info["lam"]
    assert torch.equal(info["selected"], selected) and (lam[~selected] == 1).all()
    assert info["partner"].tolist() == [k // 2 if k % 2 == 0 else -1 for k in range(16)]
    assert torch.equal(xo[~selected], x[~selected]) and torch.equal(yo[~selected], y[~selected])
    want = mix(x[selected], xj, lam[selected], domain, frames[selected], nj)
    torch.testing.assert_close(xo[selected], want)
    lam_s = lam[selected].reshape(-1, 1)
    torch.testing.assert_close(yo[selected], lam_s * y[selected] + (1 - lam_s) * yj)
    # nobody selected: no partners, nothing changes
    none = torch.zeros(16, dtype=torch.bool)
    xo, yo = mixup(x, y, 0.5, 10.0, domain, make_generator(11), frames, partner=(xj[:0], yj[:0], nj[:0], none))
    assert torch.equal(xo, x) and torch.equal(yo, y)
    # through augment_batch (float16 as stored), masks off: mixup then normalisation
    out, labels = augment_batch(
        x.half(),
        y,
        cfg(freqm=0, timem=0, mixup=0.5, mixup_domain=domain),
        MEAN,
        STD,
        make_generator(11),
        n_frames=frames,
        partner=(xj.half(), yj, nj, selected),
    )
    ref, ref_y = mixup(
        x.half().float(), y, 0.5, 10.0, domain, make_generator(11), frames, partner=(xj.half(), yj, nj, selected)
    )
    torch.testing.assert_close(out, (ref - MEAN) / STD)
    torch.testing.assert_close(labels, ref_y)
