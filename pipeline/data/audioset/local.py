"""`source: local`: clips already on disk in `local_dir`, found by a file-name template (and cut to
[start, end] here with `local_cut`, when the files hold whole videos)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.data.audio import AudioProblem, read_audio
from pipeline.data.audioset.decode import decode_segment
from pipeline.data.audioset.segments import Segment
from pipeline.data.listing import Item
from pipeline.data.sections.audioset import AudioSetData


class LocalClips:
    def __init__(self, cfg: AudioSetData):
        self.cfg = cfg
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
