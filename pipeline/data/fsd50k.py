"""FSD50K: the official Zenodo release (record 4060432), downloaded or already on disk.

The release (in `data.fsd50k.release_dir`):

    FSD50K.ground_truth.zip     -> FSD50K.ground_truth/{dev.csv, eval.csv, vocabulary.csv}
    FSD50K.dev_audio.z01..z05 + FSD50K.dev_audio.zip      a split ("multi-part") zip of 40,966 WAVs
    FSD50K.eval_audio.z01 + FSD50K.eval_audio.zip         a split zip of 10,231 WAVs

`dev.csv` is `fname,labels,mids,split` (split = train | val: the official validation split),
`eval.csv` is `fname,labels,mids`, `vocabulary.csv` is `index,name,mid` without a header; its
order is the class order (200 classes).

Downloads are checked against the sizes and MD5 checksums of the Zenodo record. A split zip is
reassembled into one standard zip (`FSD50K.dev_audio.unsplit.zip`, pipeline/data/split_zip.py): its
parts are concatenated and the central directory is rewritten with absolute offsets (what `zip -s 0`
does), so Python's zipfile reads it, zip64 included. Clips are then read straight out of that zip, so
the WAVs are never unpacked to disk. An extracted release (`FSD50K.dev_audio/*.wav` ...) is used as it is.

    python -m pipeline.data [--params params.yaml]    download + reassemble everything now (`fetch`)
"""

from __future__ import annotations

import csv
import io
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.core.params import DataSettings
from pipeline.data.audio import AudioProblem, read_audio
from pipeline.data.classes import ClassList, read_ontology
from pipeline.data.download import fetch as fetch_file
from pipeline.data.download import fetch_json, file_lock
from pipeline.data.listing import Item, Listing, Rejected
from pipeline.data.sections.fsd50k import NAME as NAME  # the registry's key for this plug-in
from pipeline.data.sections.fsd50k import FSD50KData
from pipeline.data.split_zip import reassemble_split_zip

# As the official code: classes restricted in the ontology enhance nothing (pipeline.labels.enhance).
RESTRICTED_CLASSES_ENHANCE = False

GROUND_TRUTH = "FSD50K.ground_truth"
GROUND_TRUTH_FILES = ("dev.csv", "eval.csv", "vocabulary.csv")
RECORD = "https://zenodo.org/records/4060432"


def release_dir(data: DataSettings, cfg: FSD50KData) -> Path:
    return Path(cfg.release_dir) if cfg.release_dir else Path(data.root) / "downloads" / "fsd50k"


def _hint(folder: Path) -> str:
    return (
        f"no network? download the FSD50K release ({RECORD}) elsewhere and put its files in {folder}, or point "
        f"data.fsd50k.release_dir at an extracted copy and set data.fsd50k.source=local"
    )


def archive_names(kind: str, parts: int) -> list[str]:
    """`dev` -> FSD50K.dev_audio.z01 .. .zNN, FSD50K.dev_audio.zip (the .zip is the last part)."""
    return [f"FSD50K.{kind}_audio.z{i:02d}" for i in range(1, parts + 1)] + [f"FSD50K.{kind}_audio.zip"]


# ---- downloads ---------------------------------------------------------------------------


class Release:
    """Fetches files of the release into release_dir, checked against the Zenodo record."""

    def __init__(self, data: DataSettings, cfg: FSD50KData):
        self.cfg, self.dir = cfg, release_dir(data, cfg)
        self._record: dict | None = None

    def record(self) -> dict:
        """{file name: (size, md5)} from the Zenodo record API."""
        if self._record is None:
            cfg = self.cfg
            data = fetch_json(
                cfg.record_url,
                timeout=cfg.timeout_s,
                retries=cfg.retries,
                backoff=cfg.backoff_s,
                hint=_hint(self.dir),
                what="the FSD50K record (file sizes and checksums)",
            )
            files = data.get("files", []) if isinstance(data, dict) else []
            if isinstance(files, dict):  # InvenioRDM: {"entries": {...}} or {"entries": [...]}
                files = files.get("entries", [])
            if isinstance(files, dict):
                files = list(files.values())
            record = {}
            for entry in files:
                key, size, checksum = entry.get("key"), entry.get("size"), entry.get("checksum") or ""
                md5 = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
                if key:
                    record[key] = (int(size) if size is not None else None, md5)
            self._record = record
        return self._record

    def get(self, name: str) -> Path:
        dest = self.dir / name
        if dest.is_file():
            return dest
        if self.cfg.source == "local":
            raise PipelineError(
                f"{dest}: not found; data.fsd50k.source=local expects the FSD50K release "
                f"({RECORD}) in data.fsd50k.release_dir, or set data.fsd50k.source=download"
            )
        size = md5 = None
        if self.cfg.verify:
            size, md5 = self.record().get(name, (None, None))
        cfg = self.cfg
        return fetch_file(
            f"{cfg.base_url.rstrip('/')}/{name}?download=1",
            dest,
            size=size,
            md5=md5,
            timeout=cfg.timeout_s,
            retries=cfg.retries,
            backoff=cfg.backoff_s,
            hint=_hint(self.dir),
            progress=True,
        )


def _safe_extract(archive: Path, folder: Path, members: list[str] | None = None) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir() or (members is not None and Path(info.filename).name not in members):
                continue
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise PipelineError(f"{archive}: unsafe member name {info.filename!r}")
            with zf.open(info) as src, atomic_path(folder / name) as tmp:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)


def ground_truth(data: DataSettings, cfg: FSD50KData) -> Path:
    """The folder with dev.csv, eval.csv and vocabulary.csv, downloaded and extracted when missing."""
    folder = release_dir(data, cfg) / GROUND_TRUTH
    if all((folder / f).is_file() for f in GROUND_TRUTH_FILES):
        return folder
    release = Release(data, cfg)
    try:
        with file_lock(release.dir / ".ground_truth.lock"):
            if not all((folder / f).is_file() for f in GROUND_TRUTH_FILES):
                archive = release.get(f"{GROUND_TRUTH}.zip")
                try:
                    _safe_extract(archive, release.dir, list(GROUND_TRUTH_FILES))
                except zipfile.BadZipFile as err:
                    raise PipelineError(f"{archive}: not a valid zip ({err}); delete it and rerun") from None
    except OSError as err:
        raise PipelineError(
            f"{release.dir}: cannot write the FSD50K ground truth there ({err.strerror or err}); "
            f"check data.fsd50k.release_dir"
        ) from None
    missing = [f for f in GROUND_TRUTH_FILES if not (folder / f).is_file()]
    if missing:
        raise PipelineError(f"{folder}: {', '.join(missing)} missing after extracting {GROUND_TRUTH}.zip")
    return folder


# ---- audio sources -----------------------------------------------------------------------


class FolderAudio:
    def __init__(self, folder: Path):
        self.folder = folder

    def loader(self, fname: str):
        path = self.folder / f"{fname}.wav"
        return str(path), lambda: read_audio(path)


class ZipAudio:
    """Clips read straight out of a (reassembled) zip; one open ZipFile per thread."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.local = threading.local()
        with zipfile.ZipFile(archive) as zf:
            self.members = {
                Path(i.filename).stem: i.filename for i in zf.infolist() if i.filename.lower().endswith(".wav")
            }

    def _zip(self) -> zipfile.ZipFile:
        if getattr(self.local, "zf", None) is None:
            self.local.zf = zipfile.ZipFile(self.archive)
        return self.local.zf

    def read(self, fname: str) -> tuple[np.ndarray, int]:
        source = f"{self.archive}:{fname}.wav"
        member = self.members.get(fname)
        if member is None:
            raise AudioProblem("missing_file", f"{source}: not in the archive")
        try:
            data = self._zip().read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise AudioProblem("unreadable", f"{source}: damaged archive member ({err})") from None
        if not data:
            raise AudioProblem("empty_audio", f"{source}: file is empty (0 bytes)")
        try:
            wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
            raise AudioProblem("unreadable", f"{source}: cannot decode ({err})") from None
        return np.ascontiguousarray(wave.T), rate

    def loader(self, fname: str):
        return f"{self.archive}:{fname}.wav", lambda: self.read(fname)


def audio_source(data: DataSettings, cfg: FSD50KData, kind: str):
    """Where the `kind` (dev | eval) clips are: an extracted folder, or the reassembled zip (made when needed)."""
    folder = release_dir(data, cfg)
    extracted = folder / f"FSD50K.{kind}_audio"
    if extracted.is_dir():
        return FolderAudio(extracted)
    unsplit = folder / f"FSD50K.{kind}_audio.unsplit.zip"
    if unsplit.is_file():
        return ZipAudio(unsplit)
    names = archive_names(kind, cfg.dev_parts if kind == "dev" else cfg.eval_parts)
    if cfg.source == "local" and not all((folder / n).is_file() for n in names):
        raise PipelineError(
            f"{extracted}: not found, nor the archives {', '.join(names)} in {folder}; "
            f"data.fsd50k.source=local expects the FSD50K release ({RECORD}) there, "
            f"extracted or not (or set data.fsd50k.source=download)"
        )
    try:
        _assemble(data, cfg, names, unsplit)
    except OSError as err:
        raise PipelineError(
            f"{folder}: cannot write the FSD50K {kind} audio there ({err.strerror or err}); "
            f"data.fsd50k.release_dir must be writable unless it holds the extracted "
            f"release"
        ) from None
    return ZipAudio(unsplit)


def _assemble(data: DataSettings, cfg: FSD50KData, names: list[str], unsplit: Path) -> None:
    """Download what is missing and reassemble, once, under a lock (several jobs may start at once)."""
    release = Release(data, cfg)
    with file_lock(release.dir / f".{unsplit.stem}.lock"):
        if not unsplit.is_file():
            parts = [release.get(n) for n in names]
            if len(parts) == 1 and not cfg.keep_archives:
                parts[0].rename(unsplit)
            else:
                reassemble_split_zip(parts, unsplit)
                if not cfg.keep_archives:
                    for part in parts:
                        part.unlink(missing_ok=True)


# ---- class list, ontology, listings ------------------------------------------------------


def read_vocabulary(path: Path) -> ClassList:
    with open(path, newline="") as handle:
        rows = [r for r in csv.reader(handle) if any(c.strip() for c in r)]
    if rows and not rows[0][0].strip().isdigit():  # tolerate a header
        rows = rows[1:]
    try:
        rows = sorted((int(r[0]), r[1].strip(), r[2].strip()) for r in rows)
    except (IndexError, ValueError):
        raise PipelineError(f"{path}: expected rows index,name,mid (FSD50K vocabulary.csv)") from None
    if [r[0] for r in rows] != list(range(len(rows))):
        raise PipelineError(f"{path}: indices must be 0..{len(rows) - 1}, each once")
    return ClassList(tuple(r[2] for r in rows), tuple(r[1] for r in rows))


def class_metadata(data: DataSettings, cfg: FSD50KData) -> tuple[ClassList, list[dict]]:
    """The 200 classes in vocabulary order; the AudioSet ontology (FSD50K's vocabulary is drawn from it)."""
    classes = read_vocabulary(ground_truth(data, cfg) / "vocabulary.csv")
    folder = release_dir(data, cfg)
    dest = folder / "ontology.json"
    if not dest.is_file():
        if cfg.source == "local":
            raise PipelineError(
                f"{dest}: not found; put AudioSet's ontology.json ({cfg.ontology_url}) there "
                f"(label enhancement needs it)"
            )
        fetch_file(
            cfg.ontology_url,
            dest,
            timeout=cfg.timeout_s,
            retries=cfg.retries,
            backoff=cfg.backoff_s,
            hint=f"no network? copy AudioSet's ontology.json ({cfg.ontology_url}) into {folder} by hand",
        )
    return classes, read_ontology(dest)


def list_split(data: DataSettings, cfg: FSD50KData, split: str, classes: ClassList) -> Listing:
    if split not in ("train", "val", "eval"):
        raise PipelineError(f"data.splits: FSD50K has the splits train, val, eval (got '{split}')")
    truth = ground_truth(data, cfg)
    kind = "eval" if split == "eval" else "dev"
    path = truth / f"{kind}.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]] if rows else []
    needed = ["fname", "mids"] + (["split"] if kind == "dev" else [])
    if not set(needed) <= set(header):
        raise PipelineError(f"{path}: expected the columns {','.join(needed)} (FSD50K ground truth); found {header}")
    col = {name: i for i, name in enumerate(header)}
    known = set(classes.mids)
    source = audio_source(data, cfg, kind)
    entries, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path} line {line}"
        if len(row) != len(header):
            if split != "val":
                entries.append(
                    Rejected("", where, "malformed_row", f"{where}: expected {len(header)} fields, found {len(row)}")
                )
            continue
        if kind == "dev" and row[col["split"]].strip() != split:
            continue
        fname = row[col["fname"]].strip()
        mids = tuple(dict.fromkeys(m.strip() for m in row[col["mids"]].split(",") if m.strip()))
        if not fname.replace("_", "").replace("-", "").isalnum() or fname in seen:
            reason = "duplicate_clip_id" if fname in seen else "malformed_row"
            entries.append(Rejected(fname, where, reason, f"{where}: fname {fname[:40]!r} is invalid or repeated"))
            continue
        seen.add(fname)
        unknown = [m for m in mids if m not in known]
        if unknown or not mids:
            reason, detail = (
                ("unknown_label", f"label {unknown[0]!r} is not in vocabulary.csv")
                if unknown
                else ("empty_labels", "no labels")
            )
            entries.append(Rejected(fname, where, reason, f"{where}: {detail}"))
            continue
        shown, load = source.loader(fname)
        entries.append(Item(fname, mids, shown, load))
    return Listing(split, entries)


def fetch(data: DataSettings, cfg: FSD50KData) -> list[str]:
    """Download (or check) the release and reassemble its split zips now, ahead of prepare."""
    folder = ground_truth(data, cfg)
    read_vocabulary(folder / "vocabulary.csv")
    lines = []
    for kind in ("dev", "eval"):
        source = audio_source(data, cfg, kind)
        lines.append(f"FSD50K {kind} audio: {getattr(source, 'archive', None) or source.folder}")
    return lines
