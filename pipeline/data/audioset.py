"""AudioSet: the official metadata, the segment lists, and each segment's audio.

Metadata (class list, ontology, segment CSVs) is downloaded once into `data.audioset.meta_dir`
(or read from there when already present). Segment rows look like

    # YTID, start_seconds, end_seconds, positive_labels
    --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

Malformed rows become `Rejected` entries naming the file and line. Splits: train = balanced_train
(+ unbalanced_train with `data.audioset.unbalanced`), val = a stratified, deterministic hold-out
of that pool (AudioSet has no validation split, and model selection must never see eval),
eval = eval_segments. With `data.audioset.val: eval` (the official recipe's) train is the whole pool
and val lists the eval segments: the per-epoch validation then watches eval, for monitoring only
(the evaluate stage marks a model chosen on it; docs/fidelity.md).

Audio: `source: download` runs yt-dlp once per segment (argument lists only, never a shell; the
YouTube id is validated before any process starts), with a bounded pool of workers that fetch
ahead of the prepare loop, a rate limit, a per-call timeout and retries with backoff for
transient failures. Permanent failures (unavailable, private, removed, age-restricted) are
recorded with their reason and not retried unless `retry_permanent`. With ffmpeg available,
yt-dlp fetches only [start, end]; otherwise it fetches the whole audio and PyAV cuts it here.
Partial downloads live in a private temporary folder and never reach the output folder (the
prepare stage writes each FLAC atomically and skips the valid ones on a rerun).
`source: local` reads clips from `local_dir` by a file-name template instead.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future
from pathlib import Path
from queue import Queue

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.audio import AudioProblem, read_audio
from pipeline.data.classes import ClassList, read_classes, read_ontology
from pipeline.data.datasets import Item, Listing, Rejected
from pipeline.data.download import fetch

YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")
SEGMENT_SETS = ("balanced_train", "unbalanced_train", "eval")
PERMANENT = ("unavailable", "private", "removed", "age_restricted")
OFFLINE_AFTER = 3  # segments in a row failing with network errors, before any success: stop
MAX_SEGMENT_SECONDS = 60.0
WATCH_URL = "https://www.youtube.com/watch?v={}"

# yt-dlp's error messages -> our reasons; first match wins (a removed video is also "unavailable").
_PATTERNS = [
    ("age_restricted", ("confirm your age", "age-restricted", "age restricted", "inappropriate for some users")),
    ("private", ("private video", "video is private")),
    (
        "removed",
        (
            "has been removed",
            "account associated with this video has been terminated",
            "copyright claim",
            "violating youtube",
            "no longer available because",
        ),
    ),
    (
        "unavailable",
        (
            "video unavailable",
            "video is unavailable",
            "not available in your country",
            "is not available",
            "requested format is not available",
            "does not exist",
        ),
    ),
    (
        "network",
        (
            "failed to resolve",
            "name or service not known",
            "temporary failure in name resolution",
            "nodename nor servname",
            "network is unreachable",
            "no route to host",
            "connection refused",
            "getaddrinfo failed",
            "no address associated",
        ),
    ),
]


def valid_ytid(ytid: str) -> bool:
    return bool(YTID.fullmatch(ytid))


def clip_id_of(ytid: str, start: float) -> str:
    """`Y` + id (ids may start with '-', which no clip id, file name or option should) + start."""
    return f"Y{ytid}_{start:.3f}"


class Segment:
    """One row of a segment list (small: the unbalanced list has two million of them)."""

    __slots__ = ("ytid", "start", "end", "labels", "set_name", "path", "line")

    def __init__(self, ytid, start, end, labels, set_name, path="", line=0):
        self.ytid, self.start, self.end, self.labels = ytid, start, end, labels
        self.set_name, self.path, self.line = set_name, path, line

    @property
    def clip_id(self) -> str:
        return clip_id_of(self.ytid, self.start)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


# ---- metadata ----------------------------------------------------------------------------

META_FILES = {
    "class_labels_indices": "class_labels_indices.csv",
    "ontology": "ontology.json",
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}


def meta_dir(params: Params) -> Path:
    cfg = params.data.audioset
    return Path(cfg.meta_dir) if cfg.meta_dir else Path(params.data.root) / "downloads" / "audioset"


def metadata_file(params: Params, key: str) -> Path:
    """The local copy of one metadata file, downloaded first when missing."""
    cfg, folder = params.data.audioset, meta_dir(params)
    dest = folder / META_FILES[key]
    if dest.is_file():
        return dest
    url = getattr(cfg.urls, key)
    hint = (
        f"no network? copy {dest.name} into {folder} by hand, or set data.audioset.meta_dir to a folder "
        f"that has the AudioSet metadata"
    )
    return fetch(
        url, dest, timeout=cfg.http_timeout_s, retries=cfg.http_retries, backoff=min(cfg.backoff_s, 10.0), hint=hint
    )


def class_metadata(params: Params) -> tuple[ClassList, list[dict]]:
    return (
        read_classes(metadata_file(params, "class_labels_indices")),
        read_ontology(metadata_file(params, "ontology")),
    )


def _split_row(text: str) -> list[str]:
    """`YTID, start, end, "a,b"` -> its 4 fields; the csv module only for unusual quoting."""
    parts = text.rstrip("\r\n").split(",", 3)
    if len(parts) == 4:
        last = parts[3].strip()
        if len(last) >= 2 and last[0] == last[-1] == '"' and '"' not in last[1:-1] and '"' not in text[: -len(last)]:
            return [parts[0].strip(), parts[1].strip(), parts[2].strip(), last[1:-1]]
    return [field.strip() for field in next(csv.reader([text], skipinitialspace=True), [])]


def parse_segments(path: str | Path, set_name: str, known: set[str] | None = None) -> list:
    """Rows of a segment CSV -> `Segment`s and `Rejected`s (malformed rows, with the line number)."""
    path = Path(path)
    shown = str(path)
    entries, canonical = [], {}  # one string object per label, not one per row
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            row = _split_row(text)
            ytid = row[0] if row else ""

            def reject(reason, detail, line=line, ytid=ytid):
                where = f"{shown} line {line}"
                entries.append(
                    Rejected(clip_id_of(ytid, 0.0) if valid_ytid(ytid) else "", where, reason, f"{where}: {detail}")
                )

            if len(row) != 4:
                reject(
                    "malformed_row", f'expected 4 fields (YTID, start_seconds, end_seconds, "labels"), found {len(row)}'
                )
                continue
            if not valid_ytid(ytid):
                reject("malformed_row", f"YouTube id {ytid[:40]!r} is not 11 characters of [A-Za-z0-9_-]")
                continue
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                reject("malformed_row", f"start/end {row[1][:20]!r}, {row[2][:20]!r} are not numbers")
                continue
            if not (
                math.isfinite(start) and math.isfinite(end) and 0 <= start < end and end - start <= MAX_SEGMENT_SECONDS
            ):
                reject(
                    "malformed_row",
                    f"segment [{start}, {end}] is not 0 <= start < end <= start + {MAX_SEGMENT_SECONDS:g}",
                )
                continue
            labels = tuple(
                dict.fromkeys(canonical.setdefault(t, t) for t in (t.strip() for t in row[3].split(",")) if t)
            )
            if not labels:
                reject("empty_labels", "the labels field is empty")
                continue
            if known is not None:
                unknown = [m for m in labels if m not in known]
                if unknown:
                    reject("unknown_label", f"label {unknown[0]!r} is not in the class list")
                    continue
            entries.append(Segment(ytid, start, end, labels, set_name, shown, line))
    return entries


# ---- the stratified validation hold-out --------------------------------------------------


def _rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8]


def stratified_holdout(
    keys: list[str], label_sets: list[tuple[str, ...]], fraction: float, seed: int, min_class_clips: int = 2
) -> set[int]:
    """Indices of a validation subset of about `fraction` of the clips.

    Every class with at least `min_class_clips` clips gets max(1, round(fraction * n)) of them in
    the subset (rarest classes first) and keeps at least one outside it. Clips are taken in an
    order given by a hash of their key and the seed, so the result depends on neither the input
    order nor anything but the clips themselves.
    """
    n = len(keys)
    order = sorted(range(n), key=lambda i: _rank(keys[i], seed))
    counts = Counter(label for labels in label_sets for label in labels)
    target = {c: min(max(1, round(fraction * k)), k - 1) for c, k in counts.items() if k >= min_class_clips}
    by_class = defaultdict(list)
    for i in order:
        for label in label_sets[i]:
            if label in target:
                by_class[label].append(i)
    chosen, have = set(), Counter()

    def take(i) -> bool:
        # never take a class's last clip outside the subset
        if i in chosen or any(have[l] + 1 >= counts[l] for l in label_sets[i] if counts[l] >= 2):
            return False
        chosen.add(i)
        have.update(label_sets[i])
        return True

    for label in sorted(target, key=lambda c: (counts[c], c)):
        for i in by_class[label]:
            if have[label] >= target[label]:
                break
            take(i)
    wanted = round(fraction * n)
    for i in order:
        if len(chosen) >= wanted:
            break
        take(i)
    return chosen


# ---- listing -----------------------------------------------------------------------------


def _segments(params: Params, set_names, known: set[str]) -> list:
    entries = []
    for name in set_names:
        entries += parse_segments(metadata_file(params, name), name, known)
    return entries


def list_split(params: Params, split: str, classes: ClassList) -> Listing:
    cfg = params.data.audioset
    if split not in ("train", "val", "eval"):
        raise PipelineError(f"data.splits: AudioSet has the splits train, val, eval (got '{split}')")
    pool_sets = ["balanced_train"] + (["unbalanced_train"] if cfg.unbalanced else [])
    on_eval = split == "eval" or (split == "val" and cfg.val == "eval")
    rows = _segments(params, ["eval"] if on_eval else pool_sets, set(classes.mids))

    seen, kept = set(), []
    for row in rows:
        if isinstance(row, Segment):
            if row.clip_id in seen:
                row = Rejected(
                    row.clip_id,
                    row.where,
                    "duplicate_clip_id",
                    f"{row.where}: segment {row.ytid} at {row.start:.3f} s appears earlier",
                )
            seen.add(getattr(row, "clip_id", ""))
        kept.append(row)
    if not on_eval and cfg.val == "holdout":
        pool = [i for i, row in enumerate(kept) if isinstance(row, Segment)]
        held = stratified_holdout(
            [kept[i].clip_id for i in pool],
            [kept[i].labels for i in pool],
            cfg.val_fraction,
            cfg.val_seed,
            cfg.val_min_class_clips,
        )
        val_rows = {pool[j] for j in held}
        if split == "val":
            kept = [kept[i] for i in sorted(val_rows)]
        else:  # rejected rows are reported once, under train
            kept = [row for i, row in enumerate(kept) if i not in val_rows]

    source = Fetcher(params) if cfg.source == "download" else LocalClips(params)
    entries = [source.item(row) if isinstance(row, Segment) else row for row in kept]
    return Listing(split, entries, prefetch=getattr(source, "prefetch", None))


# ---- audio: a local folder of clips ------------------------------------------------------


class LocalClips:
    def __init__(self, params: Params):
        self.cfg = params.data.audioset
        self.root = Path(self.cfg.local_dir)
        if not self.root.is_dir():
            raise PipelineError(f"{self.root}: data.audioset.local_dir is not a folder")

    def path(self, seg: Segment) -> Path:
        fields = dict(
            ytid=seg.ytid,
            start=seg.start,
            end=seg.end,
            start_ms=round(seg.start * 1000),
            end_ms=round(seg.end * 1000),
            set=seg.set_name,
        )
        try:
            return self.root / self.cfg.local_template.format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise PipelineError(
                f"data.audioset.local_template {self.cfg.local_template!r}: {err!r}; fields are {', '.join(fields)}"
            ) from None

    def item(self, seg: Segment) -> Item:
        path = self.path(seg)
        return Item(seg.clip_id, seg.labels, str(path), _LocalLoad(path, seg if self.cfg.local_cut else None))


class _LocalLoad:
    __slots__ = ("path", "seg")

    def __init__(self, path, seg):
        self.path, self.seg = path, seg

    def __call__(self):
        if self.seg is None:
            return read_audio(self.path)
        if not self.path.is_file():
            raise AudioProblem("missing_file", f"{self.path}: file not found")
        return decode_segment(self.path, self.seg.start, self.seg.end)


# ---- audio: cutting [start, end] out of a file with PyAV ----------------------------------


def _frame_array(frame) -> np.ndarray:
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved: [1, samples * channels]
        data = data.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / np.iinfo(data.dtype).max
    return data.astype(np.float32)


def decode_segment(path: str | Path, start: float, end: float) -> tuple[np.ndarray, int]:
    """Samples [start, end) (seconds) of a file's first audio stream: float32 [channels, samples]."""
    import av

    chunks, t0, count, rate = [], None, 0, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioProblem("unreadable", f"{path}: no audio stream")
            stream = container.streams.audio[0]
            sought = False
            if start > 1.0 and stream.time_base:
                try:
                    container.seek(int((start - 1.0) / stream.time_base), stream=stream)
                    sought = True
                except av.error.FFmpegError:
                    sought = False
            for frame in container.decode(stream):
                data = _frame_array(frame)
                if t0 is None:
                    rate = frame.sample_rate
                    t0 = frame.time if frame.time is not None else (None if sought else 0.0)
                    if t0 is None:
                        raise AudioProblem("unreadable", f"{path}: no timestamps to locate [{start}, {end}] by")
                chunks.append(data)
                count += data.shape[1]
                if t0 + count / rate >= end:
                    break
    except AudioProblem:
        raise
    except Exception as err:  # av raises many error classes for damaged input
        raise AudioProblem("unreadable", f"{path}: cannot decode ({type(err).__name__}: {err})") from None
    if not chunks:
        raise AudioProblem("empty_audio", f"{path}: no audio in [{start}, {end}]")
    wave = np.concatenate(chunks, axis=1)
    first = max(0, round((start - t0) * rate))
    last = max(first, round((end - t0) * rate))
    return np.ascontiguousarray(wave[:, first:last]), rate


# ---- audio: yt-dlp -----------------------------------------------------------------------

_LIVE: set = set()  # running yt-dlp processes, killed if this process exits first
_LIVE_LOCK = threading.Lock()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_live() -> None:
    with _LIVE_LOCK:
        for proc in list(_LIVE):
            _kill_group(proc)


class _Timeout(Exception):
    pass


def run_argv(argv: list[str], timeout: float, stop: threading.Event) -> tuple[int, str]:
    """Run an argument list (no shell) in its own process group; kill the group on timeout or stop."""
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                return proc.returncode, err.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline or stop.is_set():
                    _kill_group(proc)
                    proc.communicate()
                    if stop.is_set():
                        return -9, "stopped"
                    raise _Timeout() from None
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)


def classify(stderr: str) -> tuple[str, str]:
    """(reason, the message line) for a failed yt-dlp call; unknown failures are `transient`."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    message = next((l for l in reversed(lines) if l.startswith("ERROR")), lines[-1] if lines else "no message")
    text = " ".join(lines).lower()
    for reason, needles in _PATTERNS:
        if any(n in text for n in needles):
            return reason, message[:300]
    return "transient", message[:300]


class RateLimiter:
    """At most `per_second` starts per second, across threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next, self.lock = 0.0, threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            stop.wait(start - now)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Fetcher:
    """Downloads segments with yt-dlp; one per `list_split` call, shared by its items."""

    def __init__(self, params: Params):
        self.cfg = cfg = params.data.audioset
        self.limiter = RateLimiter(cfg.rate_limit)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.successes = self.network_failures = 0
        self.fatal: PipelineError | None = None
        self.futures: dict[str, Future] = {}
        self.pending: list = []
        self.queue: Queue = Queue()
        self.workers: list[threading.Thread] = []
        self.tmp_root = Path(cfg.tmp_dir) if cfg.tmp_dir else Path(tempfile.gettempdir())
        self.tmp_prefix = f"psla-ytdlp-{socket.gethostname()}-"
        self._yt_dlp = self._ffmpeg = None
        self._resolved, self._tools_lock = False, threading.Lock()
        # permanent failures of earlier runs: not tried again unless retry_permanent
        self.failures_file = meta_dir(params) / "unavailable.tsv"
        self.known_failures = {}
        if self.failures_file.is_file():
            for line in self.failures_file.read_text(errors="replace").splitlines():
                fields = line.split("\t")
                if len(fields) >= 2 and fields[1] in PERMANENT:
                    self.known_failures[fields[0]] = fields[1]

    def _remember_failure(self, seg: Segment, reason: str) -> None:
        with self.lock:
            try:
                self.failures_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.failures_file, "a") as handle:  # one short append: safe beside other shards
                    handle.write(f"{seg.clip_id}\t{reason}\t{time.strftime('%Y-%m-%d')}\n")
            except OSError:
                pass  # a read-only meta_dir: the next run simply asks again

    def item(self, seg: Segment) -> Item:
        return Item(seg.clip_id, seg.labels, f"youtu.be/{seg.ytid}?t={seg.start:g}", _FetchLoad(self, seg))

    # -- tools
    def _resolve_tools(self) -> None:
        with self._tools_lock:
            if not self._resolved:
                self._find_tools()

    def _find_tools(self) -> None:
        cfg = self.cfg
        exe = shutil.which(cfg.yt_dlp)
        if exe is None:
            beside = Path(sys.executable).with_name("yt-dlp")  # installed into the venv, which may not be on PATH
            exe = str(beside) if cfg.yt_dlp == "yt-dlp" and beside.is_file() else None
        if exe is None:
            raise PipelineError(
                f"yt-dlp not found (data.audioset.yt_dlp={cfg.yt_dlp!r}): install it (pip install "
                f"yt-dlp, a project dependency) or set data.audioset.yt_dlp to its path; or use "
                f"clips already on disk with data.audioset.source=local"
            )
        self._yt_dlp = exe
        self._ffmpeg = shutil.which(cfg.ffmpeg) if cfg.ffmpeg else None
        try:
            self.tmp_root.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(prefix=f"{self.tmp_prefix}{os.getpid()}-", dir=self.tmp_root))
            probe.rmdir()
        except OSError as err:
            raise PipelineError(
                f"{self.tmp_root}: cannot create temporary download folders there "
                f"({err.strerror or err}); set data.audioset.tmp_dir to a writable folder"
            ) from None
        for stale in self.tmp_root.glob(f"{self.tmp_prefix}*"):  # left by a killed run on this host
            match = re.match(re.escape(self.tmp_prefix) + r"(\d+)-", stale.name)
            if match and not _pid_alive(int(match.group(1))):
                shutil.rmtree(stale, ignore_errors=True)
        self._resolved = True

    def argv(self, seg: Segment, out_template: str) -> list[str]:
        """The yt-dlp argument list for one segment (the id is validated first)."""
        if not valid_ytid(seg.ytid):
            raise AudioProblem(
                "invalid_id",
                f"{seg.where}: YouTube id {seg.ytid[:40]!r} is not 11 characters of "
                f"[A-Za-z0-9_-]; not passed to yt-dlp",
            )
        cfg = self.cfg
        argv = [
            self._yt_dlp,
            "--ignore-config",
            "--no-playlist",
            "--quiet",
            "--no-warnings",
            "--no-progress",
            "--socket-timeout",
            f"{cfg.socket_timeout_s:g}",
            "-f",
            cfg.format,
            "-o",
            out_template,
        ]
        if self._ffmpeg:
            argv += [
                "--download-sections",
                f"*{seg.start:.3f}-{seg.end:.3f}",
                "--force-keyframes-at-cuts",
                "--ffmpeg-location",
                self._ffmpeg,
            ]
        return argv + list(cfg.yt_dlp_args) + ["--", WATCH_URL.format(seg.ytid)]

    # -- one segment
    def fetch(self, seg: Segment) -> tuple[np.ndarray, int]:
        if not valid_ytid(seg.ytid):  # before anything else can happen
            raise AudioProblem(
                "invalid_id",
                f"{seg.where}: YouTube id {seg.ytid[:40]!r} is not 11 characters of "
                f"[A-Za-z0-9_-]; not passed to yt-dlp",
            )
        if self.fatal:
            raise self.fatal
        cfg = self.cfg
        known = self.known_failures.get(seg.clip_id)
        if known and not cfg.retry_permanent:
            raise AudioProblem(
                known,
                f"{seg.ytid} [{seg.start:g}, {seg.end:g}]: {known.replace('_', '-')} in an "
                f"earlier run (see {self.failures_file}); set data.audioset.retry_permanent="
                f"true to try again",
            )
        self._resolve_tools()
        reason, detail = "transient", ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.stop.wait(cfg.backoff_s * 2 ** (attempt - 1))
            if self.stop.is_set():
                raise self.fatal or AudioProblem("transient", f"{seg.where}: stopped")
            self.limiter.wait(self.stop)
            try:
                folder = Path(tempfile.mkdtemp(prefix=f"{self.tmp_prefix}{os.getpid()}-", dir=self.tmp_root))
            except OSError as err:
                raise PipelineError(
                    f"{self.tmp_root}: cannot create a temporary download folder "
                    f"({err.strerror or err}); free some space or set data.audioset.tmp_dir"
                ) from None
            try:
                try:
                    code, stderr = run_argv(self.argv(seg, str(folder / "audio.%(ext)s")), cfg.timeout_s, self.stop)
                except _Timeout:
                    reason, detail = "timeout", f"yt-dlp did not finish within {cfg.timeout_s:g} s"
                    continue
                if code == 0:
                    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
                    if not files:
                        reason, detail = "transient", "yt-dlp exited without writing a file"
                        continue
                    try:
                        if self._ffmpeg:  # the file holds [start, end] only
                            wave = decode_segment(files[0], 0.0, seg.end - seg.start)
                        else:
                            wave = decode_segment(files[0], seg.start, seg.end)
                    except AudioProblem as problem:
                        reason, detail = "transient", f"downloaded file unusable: {problem.detail}"
                        continue
                    with self.lock:
                        self.successes += 1
                    return wave
                reason, detail = classify(stderr)
                if reason in PERMANENT and not cfg.retry_permanent:
                    break
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if reason == "network":
            with self.lock:
                self.network_failures += 1
                if self.successes == 0 and self.network_failures >= OFFLINE_AFTER and self.fatal is None:
                    self.fatal = PipelineError(
                        f"cannot reach YouTube: the first {self.network_failures} segments all failed with network "
                        f"errors ({detail}); no network here? run the download where there is one, or use clips "
                        f"already on disk: data.audioset.source=local with data.audioset.local_dir=DIR "
                        f"(and data.audioset.local_template)"
                    )
                    self.stop.set()
            if self.fatal:
                raise self.fatal
            reason = "transient"
        if reason in PERMANENT:
            self._remember_failure(seg, reason)
        tries = f" after {attempt + 1} attempts" if attempt else ""
        raise AudioProblem(reason, f"{seg.ytid} [{seg.start:g}, {seg.end:g}]: {detail}{tries}")

    # -- bounded concurrency: workers fetch ahead of the prepare loop
    def prefetch(self, items: list[Item]) -> None:
        """Fetch these items' audio in the background, in order, at most `concurrency` at once."""
        self.pending = [it for it in items if isinstance(it.load, _FetchLoad)]
        self.pending.reverse()  # pop() from the end = the listing's order
        for _ in range(min(self.cfg.concurrency, len(self.pending))):
            worker = threading.Thread(target=self._work, daemon=True)
            worker.start()
            self.workers.append(worker)
        for _ in range(self.cfg.concurrency * 2):
            self._submit_next()

    def _submit_next(self) -> None:
        with self.lock:
            if not self.pending:
                return
            item = self.pending.pop()
            future = self.futures[item.clip_id] = Future()
        self.queue.put((future, item.load.seg))

    def _work(self) -> None:
        while True:
            future, seg = self.queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.fetch(seg))
            except BaseException as err:  # handed to the consumer
                future.set_exception(err)

    def load(self, seg: Segment) -> tuple[np.ndarray, int]:
        with self.lock:
            future = self.futures.pop(seg.clip_id, None)
        if future is None:
            return self.fetch(seg)
        try:
            return future.result()
        finally:
            self._submit_next()


class _FetchLoad:
    __slots__ = ("fetcher", "seg")

    def __init__(self, fetcher, seg):
        self.fetcher, self.seg = fetcher, seg

    def __call__(self):
        return self.fetcher.load(self.seg)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.data.audioset`: fetch the metadata now (e.g. on a login node) and count each split."""
    from pipeline.core.cli import load_from_args, params_parser, run

    parser = params_parser(
        "Download the AudioSet metadata (class list, ontology, segment lists) and count the "
        "segments of each split, ahead of prepare."
    )

    def body(args):
        params = load_from_args(args)
        classes, ontology = class_metadata(params)
        print(f"{len(classes)} classes, {len(ontology)} ontology entries; metadata in {meta_dir(params)}")
        for split in params.data.splits:
            entries = list_split(params, split, classes).entries
            rejected = sum(isinstance(e, Rejected) for e in entries)
            print(f"{split}: {len(entries) - rejected} segments ({rejected} rows rejected)")

    run(body, parser, argv)


if __name__ == "__main__":
    main()
