"""`source: download`: yt-dlp once per segment (the YouTube id is validated before any process
starts), with a bounded pool of workers that fetch ahead of the prepare loop, a rate limit, a per-call
timeout and retries with backoff for transient failures. Permanent failures (unavailable, private,
removed, age-restricted) are recorded with their reason and not retried unless `retry_permanent`. With
ffmpeg available, yt-dlp fetches only [start, end]; otherwise it fetches the whole audio and PyAV cuts
it here. Partial downloads live in a private temporary folder and never reach the output folder (the
prepare stage writes each FLAC atomically and skips the valid ones on a rerun).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from queue import Queue

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataSettings
from pipeline.data.audio import AudioProblem
from pipeline.data.audioset.decode import decode_segment
from pipeline.data.audioset.failures import PERMANENT, classify
from pipeline.data.audioset.metadata import meta_dir
from pipeline.data.audioset.process import RunTimeout, pid_alive, run_argv
from pipeline.data.audioset.rate_limit import RateLimiter
from pipeline.data.audioset.segments import Segment, valid_ytid
from pipeline.data.listing import Item
from pipeline.data.sections.audioset import AudioSetData

OFFLINE_AFTER = 3  # segments in a row failing with network errors, before any success: stop
WATCH_URL = "https://www.youtube.com/watch?v={}"


class Fetcher:
    """Downloads segments with yt-dlp; one per `list_split` call, shared by its items."""

    def __init__(self, data: DataSettings, cfg: AudioSetData):
        self.cfg = cfg
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
        self.failures_file = meta_dir(data, cfg) / "unavailable.tsv"
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
            if match and not pid_alive(int(match.group(1))):
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
                except RunTimeout:
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
