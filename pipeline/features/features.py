"""Kaldi fbank features, computed once per clip and stored in HDF5 for training.

The file contract (docs/recipe.md, "Features"): `fbank [N, T, F]` float16 time-major, one clip per chunk for
random access; `n_frames [N]` (real frames before padding); `clip_id [N]`; `labels [N, C]`
uint8; attributes for the sample rate, the fbank options and the class ids. Clips are
written one at a time into a preallocated file, so memory does not grow with N.
Shards are separate files that `merge_shards` stitches through HDF5 virtual datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.features_layout import CONTENT_DIGEST, DATASETS
from pipeline.core.io import atomic_path, remove_stale_temporaries
from pipeline.core.params import Features
from pipeline.core.report import StageReport
from pipeline.core.shards import shard_slice
from pipeline.data.audio import SAMPLE_RATE, AudioProblem, check_wave
from pipeline.data.classes import ClassList
from pipeline.data.manifest import Entry

# The paper's fbank: fixed options (docs/recipe.md, "Features"); frame geometry and mel bins come from params.
KALDI_OPTIONS = {"htk_compat": True, "use_energy": False, "window_type": "hanning", "dither": 0.0}


def fbank_options(cfg: Features) -> dict:
    return {
        **KALDI_OPTIONS,
        "sample_frequency": SAMPLE_RATE,
        "num_mel_bins": cfg.num_mel_bins,
        "frame_shift": cfg.frame_shift_ms,
        "frame_length": cfg.frame_length_ms,
    }


def fbank_from_options(wave: np.ndarray, options: dict, target_length: int) -> tuple[np.ndarray, int]:
    """Mono wave at options["sample_frequency"] -> (fbank padded with zeros or cut to target_length,
    real frame count). The one fbank of the pipeline: the features stage passes the params' options,
    tagging the options a checkpoint recorded, so both compute the same numbers."""
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
    fbank = kaldi.fbank(tensor - tensor.mean(), **options)
    frames = fbank.shape[0]
    if frames == 0:
        raise AudioProblem("too_short", "audio is shorter than one analysis frame")
    out = np.zeros((target_length, fbank.shape[1]), np.float32)
    kept = min(frames, target_length)
    out[:kept] = fbank[:kept].numpy()
    return out, kept


def compute_fbank(wave: np.ndarray, cfg: Features) -> tuple[np.ndarray, int]:
    """16 kHz mono wave -> (fbank padded with zeros or cut to target_length, real frame count)."""
    return fbank_from_options(wave, fbank_options(cfg), cfg.target_length)


def _create(handle: h5py.File, n: int, cfg: Features, classes: ClassList) -> None:
    t, f = cfg.target_length, cfg.num_mel_bins
    handle.create_dataset("fbank", shape=(n, t, f), maxshape=(None, t, f), dtype="float16", chunks=(1, t, f))
    handle.create_dataset("n_frames", shape=(n,), maxshape=(None,), dtype="int32")
    handle.create_dataset("clip_id", shape=(n,), maxshape=(None,), dtype=h5py.string_dtype())
    handle.create_dataset(
        "labels",
        shape=(n, len(classes)),
        maxshape=(None, len(classes)),
        dtype="uint8",
        chunks=(max(1, min(n, 4096)), len(classes)),
    )
    handle.attrs["sample_rate"] = SAMPLE_RATE
    handle.attrs["fbank_options"] = json.dumps(fbank_options(cfg), sort_keys=True)
    handle.attrs["target_length"] = t
    handle.attrs["num_mel_bins"] = f
    handle.attrs["class_ids"] = json.dumps(list(classes.mids))


def extract_features(
    entries: list[Entry],
    *,
    split: str,
    data_root: str | Path,
    out: str | Path,
    cfg: Features,
    classes: ClassList,
    on_bad: str,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> StageReport:
    """Manifest entries (this shard's block) -> one HDF5 file, written atomically."""
    started = time.monotonic()
    block = entries[shard_slice(len(entries), shard)]
    report = StageReport(split, shard=f"{shard[0]}/{shard[1]}", requested=len(block))
    column = classes.index_of()
    remove_stale_temporaries(Path(out).parent, {Path(out).name})
    content = hashlib.blake2b(digest_size=16)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as handle:
        _create(handle, len(block), cfg, classes)
        bar = tqdm(block, desc=f"features {split} {report.shard}", unit="clip", disable=not progress, mininterval=1.0)
        for entry in bar:
            path = Path(data_root) / entry.audio
            try:
                unknown = [label for label in entry.labels if label not in column]
                if unknown:
                    raise AudioProblem("unknown_label", f"label {unknown[0]} is not in the class list")
                try:
                    wave, rate = sf.read(str(path), dtype="float32")
                except (sf.LibsndfileError, RuntimeError, OSError) as err:
                    raise AudioProblem("unreadable", f"cannot read ({err}); rerun the prepare stage") from None
                if rate != SAMPLE_RATE or wave.ndim != 1:
                    raise AudioProblem("not_prepared", f"{rate} Hz, {wave.ndim}-D: not a prepared 16 kHz mono clip")
                check_wave(wave[None], rate, str(path))
                fbank, frames = compute_fbank(wave, cfg)
            except AudioProblem as problem:
                detail = f"{path}: {problem.detail}" if str(path) not in problem.detail else problem.detail
                if on_bad == "fail":
                    raise PipelineError(f"{detail} [{problem.reason}] (fix it, or set data.on_bad=skip)") from None
                report.add_skip(entry.clip_id, str(path), problem.reason, detail)
                continue
            row = report.written
            stored = fbank.astype(np.float16)
            handle["fbank"][row] = stored
            handle["n_frames"][row] = frames
            handle["clip_id"][row] = entry.clip_id
            onehot = np.zeros(len(classes), np.uint8)
            onehot[[column[label] for label in entry.labels]] = 1
            handle["labels"][row] = onehot
            report.written += 1
            for part in (entry.clip_id.encode(), stored.tobytes(), onehot.tobytes()):
                content.update(part)
        bar.close()
        for name in DATASETS:
            handle[name].resize(report.written, axis=0)
        handle.attrs[CONTENT_DIGEST] = content.hexdigest()
    report.seconds = round(time.monotonic() - started, 3)
    return report.check()


def merge_shards(paths: list[Path], out: str | Path) -> int:
    """Stitch shard files into one file of virtual datasets (no copy); returns the clip count.

    Source paths are stored relative to `out`, which HDF5 resolves against the merged file's
    own folder, so the shards and the merged file can move together.
    """
    out = Path(out)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise PipelineError(f"{missing[0]}: shard file missing; run the features stage for that shard first")
    sizes, attrs, specs, digests = [], None, {}, []
    for path in paths:
        with h5py.File(path, "r") as part:
            sizes.append(part["fbank"].shape[0])
            options = {k: v for k, v in part.attrs.items() if k != CONTENT_DIGEST}
            digests.append(str(part.attrs.get(CONTENT_DIGEST, "")))
            attrs = attrs or options
            if options != attrs:
                raise PipelineError(f"{path}: feature options differ from the other shards; recompute all shards")
            for name in DATASETS:
                specs[name] = (part[name].shape[1:], part[name].dtype)
    total = sum(sizes)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as handle:
            for name in DATASETS:
                tail, dtype = specs[name]
                layout = h5py.VirtualLayout(shape=(total, *tail), dtype=dtype)
                start = 0
                for path, size in zip(paths, sizes):
                    if size:
                        source = os.path.relpath(Path(path).absolute(), out.parent.absolute())
                        layout[start : start + size] = h5py.VirtualSource(source, name, shape=(size, *tail))
                    start += size
                handle.create_virtual_dataset(name, layout, fillvalue=None)
            handle.attrs.update(attrs)
            # The shards' digests make the merged file's bytes follow their contents, so that DVC
            # reruns what reads it when a shard changes (its virtual datasets alone would not change).
            handle.attrs[CONTENT_DIGEST] = json.dumps(digests)
    return total


def relabel(features: str | Path, entries: list[Entry], classes: ClassList, out: str | Path) -> int:
    """A features file with new labels (e.g. enhanced ones) and the same fbanks, without copying them.

    `fbank`, `n_frames` and `clip_id` become virtual datasets over `features`; `labels` is
    written from `entries`, matched by clip id (every clip of the file needs an entry).
    Returns the number of labels that differ from the original file's.
    """
    features, out = Path(features), Path(out)
    column = classes.index_of()
    by_clip = {e.clip_id: e.labels for e in entries}
    with h5py.File(features, "r") as source:
        clip_ids = [c.decode() if isinstance(c, bytes) else c for c in source["clip_id"][:]]
        if json.loads(source.attrs["class_ids"]) != list(classes.mids):
            raise PipelineError(f"{features}: its classes differ from the class list; recompute the features")
        missing = [c for c in clip_ids if c not in by_clip]
        if missing:
            raise PipelineError(f"{features}: clip '{missing[0]}' has no row in the relabelling manifest")
        labels = np.zeros((len(clip_ids), len(classes)), np.uint8)
        for row, clip in enumerate(clip_ids):
            unknown = [m for m in by_clip[clip] if m not in column]
            if unknown:
                raise PipelineError(f"clip '{clip}': label {unknown[0]} is not in the class list")
            labels[row, [column[m] for m in by_clip[clip]]] = 1
        changed = int((labels != source["labels"][:]).sum())
        specs = {name: (source[name].shape, source[name].dtype) for name in ("fbank", "n_frames", "clip_id")}
        attrs = dict(source.attrs)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as handle:
            relative = os.path.relpath(features.absolute(), out.parent.absolute())
            for name, (shape, dtype) in specs.items():
                layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
                layout[...] = h5py.VirtualSource(relative, name, shape=shape)
                handle.create_virtual_dataset(name, layout, fillvalue=None)
            handle.create_dataset("labels", data=labels, chunks=(max(1, min(len(labels), 4096)), len(classes)))
            handle.attrs.update(attrs)
    return changed


def normalisation_stats(path: str | Path, chunk: int = 256) -> dict:
    """Mean and std over the real (unpadded) frames of a features file, float64 accumulators."""
    total, total_sq, count = 0.0, 0.0, 0
    with h5py.File(path, "r") as handle:
        n = handle["fbank"].shape[0]
        frames = handle["n_frames"][:]
        for start in range(0, n, chunk):
            block = handle["fbank"][start : start + chunk].astype(np.float64)
            real = np.arange(block.shape[1])[None, :] < frames[start : start + chunk, None]
            values = block[real]
            total += values.sum()
            total_sq += np.square(values).sum()
            count += values.size
    if count == 0:
        raise PipelineError(f"{path}: no frames to compute normalisation statistics from")
    mean = total / count
    return {"mean": mean, "std": float(np.sqrt(max(total_sq / count - mean**2, 0.0))), "values": count, "clips": int(n)}
