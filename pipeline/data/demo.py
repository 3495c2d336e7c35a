"""The synthetic "mini-AudioSet" demo dataset.

Deterministic from a seed, no network, no file reads: multi-label 16 kHz clips built from
overlapping synthetic events (tones, chirps, harmonic stacks, coloured noises, clicks,
AM/FM) that carry real AudioSet MIDs and a small subset of the real AudioSet ontology.

Classes and their sounds (``*`` = parent in the demo ontology):

* ``Sine wave``* (steady tone) -> ``Chirp tone`` (repeated up-chirps), ``Harmonic``
  (harmonic stack)
* ``Beep, bleep``: the steady tone's pitch distribution, pulsed.
* ``Whoosh, swoosh, swish``: repeated DOWN-chirps over the band distribution of
  ``Chirp tone``.
* ``Alarm``* (no sound of its own) -> ``Siren``* (fast triangle-FM yelp) ->
  ``Civil defense siren`` (slow rise/fall sweep over the same band); ``Alarm`` ->
  ``Buzzer`` (steady square-ish tone), ``Smoke detector, smoke alarm`` (high beeps in
  groups of three)
* ``Reversing beeps``: regular beeps at the smoke detector's pitch distribution and a
  similar duty cycle.
* ``Noise``* (brown noise) -> ``White noise``, ``Pink noise``
* ``Clock``* (no sound of its own) -> ``Tick`` (regular clicks), ``Tick-tock`` (clicks in
  uneven long/short pairs, same click spectrum and rate)

Several classes differ only in time structure (up- vs down-chirp, steady vs pulsed tone,
beep rhythms, click rhythms, fast vs slow siren sweep), so a classifier on the
time-averaged spectrum cannot separate them while one that sees time structure can.

Clips: ``cfg.min_events``..``cfg.max_events`` events (uniform count), each lasting 50-100 %
of the clip at a uniform random onset, so events overlap; every event draws its own small
jitter (pitch, band, sweep/beep/click rate, phase, noise colour) from its seed. The first
event of clip ``i`` cycles through a per-split permutation of the sounding classes (so
every class is in every split of at least 14 clips), the others are drawn uniformly
without repetition, and at most one of the three noises shares a clip (a stationary noise
under a louder noise of another colour is unrecoverable).

Labels: an event of class ``c`` makes ``c`` and all its demo ancestors true
(``ClipSpec.true_labels``). On the train split only, the observed labels
(``ClipSpec.labels``) are made imperfect like AudioSet's: a child label is dropped with
probability ``drop_child`` when its parent stays labelled, then a parent label is dropped
with probability ``drop_parent`` when one of its children stays labelled. A clip never
ends up with no labels. val and eval keep the complete labels.

Levels: each event is normalised to unit RMS over its duration and then scaled to
``REF_RMS * 10**(g/20)`` with ``g`` uniform in ``cfg.snr_db`` (dB relative to the
reference level ``REF_RMS``). A quiet pink-ish background sits at ``BACKGROUND_DB`` dB
relative to the same reference, so each event's SNR against the background is
``g - BACKGROUND_DB`` and overlapping events differ in level by up to the width of the
``snr_db`` range. A clip whose peak exceeds ``PEAK`` is scaled down to ``PEAK``.

``cfg`` is the ``data.demo`` params section (attributes or a mapping): ``seed``,
``n_train``, ``n_val``, ``n_eval``, ``clip_seconds``, ``min_events``, ``max_events``,
``snr_db`` ([low, high] dB), ``drop_child``, ``drop_parent``.

Determinism: ``clip_specs`` draws clip ``i`` of a split from its own seed sequence
``(cfg.seed, split, i)``, so a larger split extends a smaller one; ``synthesize`` depends
only on the spec and ``cfg`` (every event carries its own seed), so shards of a split can
be synthesised in separate processes in any order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataSettings
from pipeline.data.classes import ClassList
from pipeline.data.listing import Item, Listing
from pipeline.data.sections.demo import NAME as NAME  # the registry's key for this plug-in
from pipeline.data.sections.demo import SPLITS, DemoData

SAMPLE_RATE = 16000
REF_RMS = 0.05
BACKGROUND_DB = -30.0
PEAK = 0.99
RAMP_S = 0.01  # raised-cosine ramps on every event and every beep

_SPLIT_CODE = {"train": 1, "val": 2, "eval": 3}

# (mid, display name, parent mid or None, sound kind or None if the class has no own sound)
_CLASSES = (
    ("/m/01v_m0", "Sine wave", None, "sine"),
    ("/m/0hdsk", "Chirp tone", "/m/01v_m0", "chirp_up"),
    ("/m/0b9m1", "Harmonic", "/m/01v_m0", "harmonic"),
    ("/m/02fs_r", "Beep, bleep", None, "beep"),
    ("/m/07rqsjt", "Whoosh, swoosh, swish", None, "chirp_down"),
    ("/m/07pp_mv", "Alarm", None, None),
    ("/m/03kmc9", "Siren", "/m/07pp_mv", "siren_fast"),
    ("/m/0dgbq", "Civil defense siren", "/m/03kmc9", "siren_slow"),
    ("/m/030rvx", "Buzzer", "/m/07pp_mv", "buzzer"),
    ("/m/01y3hg", "Smoke detector, smoke alarm", "/m/07pp_mv", "smoke_beeps"),
    ("/m/02rhddq", "Reversing beeps", None, "reversing_beeps"),
    ("/m/096m7z", "Noise", None, "brown_noise"),
    ("/m/0chx_", "White noise", "/m/096m7z", "white_noise"),
    ("/m/0cj0r", "Pink noise", "/m/096m7z", "pink_noise"),
    ("/m/01x3z", "Clock", None, None),
    ("/m/07qjznt", "Tick", "/m/01x3z", "tick"),
    ("/m/07qjznl", "Tick-tock", "/m/01x3z", "tick_tock"),
)

_SOUND_TEXT = {
    "sine": "a steady sine tone",
    "chirp_up": "repeated upward log-frequency chirps",
    "harmonic": "a steady harmonic stack",
    "beep": "a pulsed sine tone",
    "chirp_down": "repeated downward log-frequency chirps",
    "siren_fast": "a fast triangle-FM yelp",
    "siren_slow": "a slow rising and falling sweep",
    "buzzer": "a steady square-ish tone",
    "smoke_beeps": "high beeps in groups of three",
    "reversing_beeps": "regular high beeps",
    "brown_noise": "brown noise",
    "white_noise": "white noise",
    "pink_noise": "pink noise",
    "tick": "regular clicks",
    "tick_tock": "clicks in uneven long/short pairs",
    None: "no sound of its own; present when one of its children is",
}

_INDEX = {mid: i for i, (mid, *_rest) in enumerate(_CLASSES)}
_PARENT = {mid: parent for mid, _n, parent, _k in _CLASSES}
_KIND = {mid: kind for mid, _n, _p, kind in _CLASSES}
_CHILDREN = {mid: tuple(m for m, _n, p, _k in _CLASSES if p == mid) for mid, *_r in _CLASSES}
_SOUNDING = tuple(mid for mid, _n, _p, kind in _CLASSES if kind is not None)
# sounds of one exclusive group do not share a clip (while the event count allows): a
# stationary noise under a louder noise of another colour would be unrecoverable
_GROUP = {mid: ("noise" if _KIND[mid].endswith("_noise") else mid) for mid in _SOUNDING}


def _ancestors(mid: str) -> list[str]:
    out = []
    p = _PARENT[mid]
    while p is not None:
        out.append(p)
        p = _PARENT[p]
    return out


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to re-synthesise one demo clip.

    ``events`` is a tuple of ``(mid, onset_s, duration_s, gain_db, seed)`` tuples.
    """

    clip_id: str
    split: str
    index: int
    events: tuple
    true_labels: tuple[str, ...]
    labels: tuple[str, ...]


def class_table() -> list[dict]:
    """The demo classes: ``[{"index", "mid", "display_name"}, ...]`` (AudioSet's MIDs/names)."""
    return [{"index": i, "mid": mid, "display_name": name} for i, (mid, name, _p, _k) in enumerate(_CLASSES)]


def ontology() -> list[dict]:
    """The demo classes in AudioSet ``ontology.json`` format, links restricted to demo classes."""
    return [
        {
            "id": mid,
            "name": name,
            "description": f"Demo class (synthetic): {_SOUND_TEXT[kind]}.",
            "citation_uri": "",
            "positive_examples": [],
            "child_ids": list(_CHILDREN[mid]),
            "restrictions": [],
        }
        for mid, name, _p, kind in _CLASSES
    ]


def _get(cfg, key):
    """``cfg.key``; ``cfg`` may also be a mapping (the ``data.demo`` params section)."""
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def _n_for_split(cfg, split: str) -> int:
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown demo split {split!r}; expected one of {', '.join(SPLITS)}")
    return int(_get(cfg, f"n_{split}"))


def _sorted_labels(mids) -> tuple[str, ...]:
    return tuple(sorted(set(mids), key=_INDEX.__getitem__))


def _observed(true: tuple[str, ...], rng: np.random.Generator, drop_child: float, drop_parent: float):
    obs = set(true)
    # children first: drop a child while its parent stays labelled
    for c in true:
        p = _PARENT[c]
        u = rng.random()
        if p is not None and p in obs and c in obs and u < drop_child:
            obs.discard(c)
    # then parents: drop a parent while one of its children stays labelled
    for p in true:
        u = rng.random()
        if _CHILDREN[p] and p in obs and any(c in obs for c in _CHILDREN[p]) and u < drop_parent:
            obs.discard(p)
    assert obs  # a drop always leaves the other end of the link labelled
    return _sorted_labels(obs)


def clip_specs(cfg, split: str) -> list[ClipSpec]:
    """The ``cfg.n_<split>`` clip specs of ``split`` (``train``, ``val`` or ``eval``)."""
    n = _n_for_split(cfg, split)
    seed = int(_get(cfg, "seed"))
    code = _SPLIT_CODE[split]
    clip_s = float(_get(cfg, "clip_seconds"))
    lo_ev, hi_ev = int(_get(cfg, "min_events")), int(_get(cfg, "max_events"))
    if lo_ev < 1:
        raise ValueError(f"data.demo.min_events must be >= 1, got {lo_ev}")
    if hi_ev < lo_ev:
        raise ValueError(f"data.demo.max_events ({hi_ev}) must be >= min_events ({lo_ev})")
    g_lo, g_hi = (float(v) for v in _get(cfg, "snr_db"))
    drop_child, drop_parent = float(_get(cfg, "drop_child")), float(_get(cfg, "drop_parent"))
    n_sound = len(_SOUNDING)
    # the first event of clip i cycles through a per-split permutation of the sounding
    # classes, so every class appears in every split of at least len(_SOUNDING) clips
    perm = np.random.default_rng(np.random.SeedSequence([seed, code, 0xC1A55])).permutation(n_sound)

    specs = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, i]))
        n_ev = int(rng.integers(lo_ev, hi_ev + 1))
        chosen = [int(perm[i % n_sound])]
        for _ in range(n_ev - 1):
            # at most one event of each exclusive group (e.g. one noise) while possible
            taken = {_GROUP[_SOUNDING[k]] for k in chosen}
            pool = [k for k in range(n_sound) if k not in chosen and _GROUP[_SOUNDING[k]] not in taken]
            pool = pool or [k for k in range(n_sound) if k not in chosen] or list(range(n_sound))
            chosen.append(int(rng.choice(pool)))
        events = []
        for k in chosen:
            dur = clip_s * float(rng.uniform(0.5, 1.0))
            onset = float(rng.uniform(0.0, clip_s - dur))
            gain = float(rng.uniform(g_lo, g_hi))
            ev_seed = int(rng.integers(0, 2**63 - 1))
            events.append((_SOUNDING[k], round(onset, 4), round(dur, 4), round(gain, 3), ev_seed))
        events.sort(key=lambda e: (e[1], _INDEX[e[0]]))
        true = _sorted_labels(m for e in events for m in [e[0], *_ancestors(e[0])])
        labels = _observed(true, rng, drop_child, drop_parent) if split == "train" else true
        specs.append(
            ClipSpec(
                clip_id=f"demo-{split}-{i:06d}",
                split=split,
                index=i,
                events=tuple(events),
                true_labels=true,
                labels=labels,
            )
        )
    return specs


# ----------------------------------------------------------------------------- synthesis


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _ramp_env(n: int, sr: int, ramp_s: float = RAMP_S) -> np.ndarray:
    env = np.ones(n)
    r = min(int(ramp_s * sr), n // 2)
    if r > 0:
        w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)
        env[:r] = w
        env[n - r :] = w[::-1]
    return env


def _gate(t: np.ndarray, starts, on_s: float, sr: int) -> np.ndarray:
    """Sum of raised-cosine-ramped on-windows of length ``on_s`` starting at ``starts``."""
    g = np.zeros(len(t))
    n_on = max(int(round(on_s * sr)), 2)
    env = _ramp_env(n_on, sr)
    for s in starts:
        a = int(round(s * sr))
        lo, hi = max(a, 0), min(a + n_on, len(t))
        if hi > lo:
            g[lo:hi] = np.maximum(g[lo:hi], env[lo - a : hi - a])
    return g


def _sweep(rng, t, f_lo, f_hi, shape, period, sr):
    """Tone whose log-frequency follows ``shape`` (saw_up, saw_down, triangle) in [f_lo, f_hi]."""
    ph = (t / period + rng.uniform()) % 1.0
    if shape == "saw_up":
        x = ph
    elif shape == "saw_down":
        x = 1.0 - ph
    else:  # triangle
        x = 1.0 - np.abs(2.0 * ph - 1.0)
    f = f_lo * (f_hi / f_lo) ** x
    phase = 2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi)
    return np.sin(phase)


def _coloured_noise(rng, n, exponent, sr):
    """Gaussian noise with power spectrum ~ 1/f**exponent (floored at 20 Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= np.maximum(f, 20.0) ** (-exponent / 2.0)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def _clicks(n, times, sr, fc, tau):
    """Damped-sinusoid clicks at ``times`` (s), resonance ``fc``, decay ``tau`` (s)."""
    L = int(8 * tau * sr)
    k = np.arange(L) / sr
    click = np.exp(-k / tau) * np.sin(2 * np.pi * fc * k)
    out = np.zeros(n)
    for s in times:
        a = int(round(s * sr))
        if a >= n:
            break
        m = min(L, n - a)
        out[a : a + m] += click[:m]
    return out


# pitch / band distributions shared by classes that must differ only in time structure
_TONE_F = (400.0, 2000.0)  # Sine wave, Beep
_CHIRP_LO = (300.0, 1000.0)  # Chirp tone (up), Whoosh (down)
_CHIRP_RATIO = (2.0, 3.5)
_CHIRP_PERIOD = (0.35, 0.6)
_SIREN_LO = (500.0, 900.0)  # Siren, Civil defense siren
_SIREN_RATIO = (1.5, 2.0)
_HIGH_BEEP_F = (2500.0, 4000.0)  # Smoke detector, Reversing beeps
_CLICK_FC = (1500.0, 4000.0)  # Tick, Tick-tock
_CLICK_TAU = (0.002, 0.004)


def _event_signal(kind: str, n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(n) / sr
    if kind in ("sine", "beep"):
        f0 = _loguniform(rng, *_TONE_F)
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
        if kind == "beep":
            period = rng.uniform(0.3, 0.45)
            starts = np.arange(-rng.uniform(0, period), t[-1] + period, period)
            x = x * _gate(t, starts, 0.5 * period, sr)
        return x
    if kind in ("chirp_up", "chirp_down"):
        f_lo = _loguniform(rng, *_CHIRP_LO)
        f_hi = f_lo * rng.uniform(*_CHIRP_RATIO)
        period = rng.uniform(*_CHIRP_PERIOD)
        return _sweep(rng, t, f_lo, f_hi, "saw_up" if kind == "chirp_up" else "saw_down", period, sr)
    if kind in ("siren_fast", "siren_slow"):
        f_lo = _loguniform(rng, *_SIREN_LO)
        f_hi = f_lo * rng.uniform(*_SIREN_RATIO)
        period = 1.0 / rng.uniform(3.0, 6.0) if kind == "siren_fast" else rng.uniform(1.2, 2.0)
        return _sweep(rng, t, f_lo, f_hi, "triangle", period, sr)
    if kind == "harmonic":
        f0 = _loguniform(rng, 120.0, 400.0)
        x = np.zeros(n)
        for h in range(1, 11):
            if h * f0 < 7000.0:
                x += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h
        return x
    if kind == "buzzer":
        f0 = _loguniform(rng, 100.0, 300.0)
        x = np.zeros(n)
        for h in range(1, 40, 2):
            if h * f0 < 7000.0:
                x += np.sin(2 * np.pi * h * f0 * t) / h
        return x
    if kind in ("smoke_beeps", "reversing_beeps"):
        f0 = _loguniform(rng, *_HIGH_BEEP_F)
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
        if kind == "smoke_beeps":
            on = rng.uniform(0.12, 0.16)
            step = on + rng.uniform(0.08, 0.11)
            period = 3 * step + rng.uniform(0.5, 0.7)
            groups = np.arange(-rng.uniform(0, period), t[-1] + period, period)
            starts = (groups[:, None] + step * np.arange(3)[None, :]).ravel()
        else:
            on = rng.uniform(0.25, 0.35)
            period = on / rng.uniform(0.36, 0.42)
            starts = np.arange(-rng.uniform(0, period), t[-1] + period, period)
        return x * _gate(t, starts, on, sr)
    if kind == "brown_noise":
        return _coloured_noise(rng, n, 2.0 + rng.uniform(-0.2, 0.2), sr)
    if kind == "pink_noise":
        return _coloured_noise(rng, n, 1.0 + rng.uniform(-0.15, 0.15), sr)
    if kind == "white_noise":
        return _coloured_noise(rng, n, rng.uniform(-0.1, 0.1), sr)
    if kind in ("tick", "tick_tock"):
        fc = _loguniform(rng, *_CLICK_FC)
        tau = rng.uniform(*_CLICK_TAU)
        if kind == "tick":
            period = rng.uniform(0.2, 0.3)
            times = np.arange(rng.uniform(0, period), t[-1], period)
        else:
            pair = rng.uniform(0.4, 0.6)
            r = rng.uniform(0.25, 0.33)
            first = np.arange(rng.uniform(0, pair), t[-1], pair)
            times = np.sort(np.concatenate([first, first + r * pair]))
        times = times + rng.normal(0.0, 0.002, size=len(times))
        return _clicks(n, np.clip(times, 0.0, None), sr, fc, tau)
    raise ValueError(f"unknown demo sound kind {kind!r}")


def synthesize(spec: ClipSpec, cfg) -> np.ndarray:
    """The clip's waveform: float32 mono at 16 kHz, ``round(cfg.clip_seconds*16000)`` samples,
    peak <= 0.99. Depends only on ``spec`` and ``cfg``."""
    sr = SAMPLE_RATE
    n = int(round(float(_get(cfg, "clip_seconds")) * sr))
    code = _SPLIT_CODE[spec.split]
    bg_rng = np.random.default_rng(np.random.SeedSequence([int(_get(cfg, "seed")), code, spec.index, 0xB6]))
    bg = _coloured_noise(bg_rng, n, 1.0, sr)
    out = bg * (REF_RMS * 10 ** (BACKGROUND_DB / 20.0) / (np.sqrt(np.mean(bg**2)) + 1e-12))
    for mid, onset, dur, gain_db, ev_seed in spec.events:
        a = min(int(round(onset * sr)), n - 1)
        m = max(min(int(round(dur * sr)), n - a), 1)
        x = _event_signal(_KIND[mid], m, np.random.default_rng(ev_seed), sr)
        x = x * _ramp_env(m, sr)
        rms = np.sqrt(np.mean(x**2))
        if rms > 0:
            out[a : a + m] += x * (REF_RMS * 10 ** (gain_db / 20.0) / rms)
    out -= out.mean()
    peak = np.max(np.abs(out))
    if peak > PEAK:
        out *= (PEAK - 1e-6) / peak  # stays <= PEAK after the float32 cast
    return out.astype(np.float32)


# ---- the dataset plug-in (pipeline.data.registry) -----------------------------------------------


def class_metadata(data: DataSettings, cfg: DemoData) -> tuple[ClassList, list[dict]]:
    table = class_table()
    return ClassList(tuple(r["mid"] for r in table), tuple(r["display_name"] for r in table)), ontology()


def list_split(data: DataSettings, cfg: DemoData, split: str, classes: ClassList) -> Listing:
    if split not in SPLITS:
        raise PipelineError(f"data.splits: the demo dataset has the splits train, val, eval (got '{split}')")

    def loader(spec):
        return lambda: (synthesize(spec, cfg)[None, :], SAMPLE_RATE)

    return Listing(
        split, [Item(s.clip_id, tuple(s.labels), f"demo:{s.clip_id}", loader(s)) for s in clip_specs(cfg, split)]
    )
