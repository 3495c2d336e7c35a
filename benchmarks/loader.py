"""Training loader: our HDF5 loader + on-device augmentation vs the paper's on-the-fly loader.

    .venv/bin/python -m benchmarks.loader [--clips 200 --batch 100 --workers 0 1 2 --batches 5]

Baseline (as the paper's dataloader does, per item): decode the FLAC, with probability 0.5
decode a second clip and mix the waveforms with lambda ~ Beta(10, 10), compute the Kaldi
fbank, pad/cut to 1056 frames, SpecAugment, normalise. Ours: read the float16 fbank rows from
HDF5, then mixup (power domain), SpecAugment and normalisation batched, with the paper's mixup
partners (`augment.mixup_partner: dataset`: drawn uniformly from the whole training split, their
fbank rows read by the workers too). Same clips, same balanced sampler, batch size and number of
workers. Target (issue 4): at least 10x.
Also: peak RSS of a loader worker process reading a 1,000- vs a 10,000-clip features file.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psla` sets it, before torch loads

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import peak_rss_mb, write_clips, write_dataset
from pipeline.core.params import Params
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest
from pipeline.features.features import compute_fbank, extract_features
from pipeline.labels.weights import label_matrix, sample_weights
from pipeline.training.loader import FeatureDataset, Normaliser, device_batches, train_loader
from pipeline.training.sampler import make_sampler


class OnTheFlyDataset(Dataset):
    """The paper's loader: everything from the audio file, every item, every epoch."""

    def __init__(self, root: Path, entries, classes, params: Params, norm: Normaliser):
        self.root, self.entries, self.params, self.norm = root, entries, params, norm
        self.labels = torch.from_numpy(label_matrix(entries, classes)).float()
        self.freqm = T.FrequencyMasking(params.augment.freqm)
        self.timem = T.TimeMasking(params.augment.timem)

    def __len__(self):
        return len(self.entries)

    def _wave(self, i):
        wave, _ = sf.read(str(self.root / self.entries[i].audio), dtype="float32")
        return wave

    def __getitem__(self, i):
        wave, label = self._wave(i), self.labels[i]
        if np.random.random() < self.params.augment.mixup:
            j = np.random.randint(len(self.entries))
            lam = np.random.beta(10, 10)
            other = self._wave(j)
            n = min(len(wave), len(other))
            wave = lam * wave[:n] + (1 - lam) * other[:n]
            label = lam * label + (1 - lam) * self.labels[j]
        fbank, _ = compute_fbank(wave.astype(np.float32), self.params.features)
        fbank = torch.from_numpy(fbank).T[None]
        fbank = self.timem(self.freqm(fbank))[0].T
        return (fbank - self.norm.mean) / self.norm.std, label


PAPER_FEATURES = {"num_mel_bins": 128, "frame_shift_ms": 10.0, "target_length": 1056}
PAPER_AUGMENT = {"freqm": 48, "timem": 192, "mixup": 0.5, "mixup_partner": "dataset"}


def clips_per_second(batches, count: int, batch: int) -> float:
    iterator = iter(batches)
    next(iterator)  # workers started, first batch in: not counted
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="the paper's AudioSet batch size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to compare at")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    norm = Normaliser(-4.6476, 4.5699)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        features = Params.model_validate({"features": PAPER_FEATURES}).features
        audio = write_clips(root, args.clips, 10.0)
        entries = read_manifest(write_dataset(root, args.clips, audio))
        classes = read_classes(root / "classes.csv")
        extract_features(
            entries,
            split="train",
            data_root=root,
            out=root / "train.h5",
            cfg=features,
            classes=classes,
            on_bad="fail",
            progress=False,
        )
        weights = sample_weights(label_matrix(entries, classes))
        draws = (args.batches + 1) * args.batch

        for workers in args.workers:
            # The main process's intra-op threads and the workers share the cores: more threads than
            # cores made our batched augmentation 2-3x slower on a 2-core machine. Both loaders run
            # under the same setting (the baseline's main process only collects batches).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
            params = Params.model_validate(
                {
                    "features": PAPER_FEATURES,
                    "augment": PAPER_AUGMENT,
                    "train": {"batch_size": args.batch, "num_workers": workers},
                }
            )
            ours, base = [], []
            for repeat in range(args.repeats):
                loader = train_loader(
                    params, FeatureDataset(root / "train.h5"), weights, seed=repeat, num_samples=draws
                )
                batches = device_batches(loader, params, norm, "cpu", torch.Generator().manual_seed(repeat))
                ours.append(clips_per_second(batches, args.batches, args.batch))
                del batches, loader
                baseline = DataLoader(
                    OnTheFlyDataset(root, entries, classes, params, norm),
                    batch_size=args.batch,
                    sampler=make_sampler(params, weights, seed=repeat, num_samples=draws),
                    num_workers=workers,
                    prefetch_factor=4 if workers else None,
                )
                base.append(clips_per_second(baseline, max(2, args.batches // 2), args.batch))
            o, b = statistics.median(ours), statistics.median(base)
            print(
                f"loader, 10 s clips, batch {args.batch}, {workers} workers: ours {o:.0f} clips/s, on-the-fly "
                f"baseline {b:.1f} clips/s (medians of {args.repeats}); ratio {o / b:.1f}x (target >= 10x)"
            )

        rss = {}
        for n in (1000, 10000):
            path = root / f"grow{n}.h5"
            with h5py.File(path, "w") as f:
                fbank = f.create_dataset("fbank", shape=(n, 100, 128), dtype="float16", chunks=(1, 100, 128))
                for start in range(0, n, 1000):
                    fbank[start : start + 1000] = np.random.default_rng(start).normal(-5, 4, (1000, 100, 128))
                f["labels"] = np.zeros((n, 4), np.uint8)
                f["n_frames"] = np.full(n, 100, np.int32)
                f["clip_id"] = [f"c{i}" for i in range(n)]
            code = (
                f"import numpy as np\nfrom pipeline.training.loader import FeatureDataset\n"
                f"ds = FeatureDataset({str(path)!r})\n"
                f"for i in np.random.default_rng(0).integers(0, len(ds), 3000): ds[int(i)]\nRESULT = {{}}"
            )
            rss[n], _ = peak_rss_mb(code)
        print(
            f"memory: loader worker peak RSS {rss[1000]:.0f} MB reading a 1,000-clip file, {rss[10000]:.0f} MB "
            f"reading a 10,000-clip file; ratio {rss[10000] / rss[1000]:.2f}x"
        )


if __name__ == "__main__":
    main()
