"""Split ("spanned") zip archives, as Zenodo serves FSD50K's audio (`.z01 .. .zNN`, then `.zip`), joined into
one standard zip.

`zip -s` cuts one archive into parts and records every position relative to the part it lies in (a disk
number and an offset on that disk). Python's zipfile reads single-file archives only, so the parts are
concatenated and the central directory is rewritten with absolute offsets, as `zip -s 0` does, zip64
included (FSD50K's dev audio is over 4 GiB). None of the PyPI libraries checked reads split zips with
random access: multivolumefile joins the bytes but leaves the per-part offsets, stream-unzip reads the
members only in order.

The records are those of PKWARE's APPNOTE.TXT, section 4.3 (the zip64 extra field: 4.5.3).
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path

U16, U32 = 0xFFFF, 0xFFFFFFFF  # a field at its maximum: the value is in the zip64 record or extra field
ZIP64_EXTRA = 0x0001  # the zip64 extended information extra field's tag
ZIP64_VERSION = 45  # "version needed to extract" of a zip64 record: 4.5
REDOWNLOAD = "delete it and download it again"


class EndRecord(NamedTuple):
    """End of central directory record, its fixed part (a comment of `comment_length` bytes follows)."""

    signature: bytes
    disk: int
    cd_disk: int  # the part the central directory starts in
    disk_entries: int
    entries: int
    cd_size: int
    cd_offset: int  # where the central directory starts, on cd_disk
    comment_length: int

    SIGNATURE = b"PK\x05\x06"
    FORMAT = struct.Struct("<4s4H2LH")


class Zip64Locator(NamedTuple):
    """Zip64 end of central directory locator: just before the end record, it points at the zip64 record."""

    signature: bytes
    record_disk: int
    record_offset: int
    disks: int

    SIGNATURE = b"PK\x06\x07"
    FORMAT = struct.Struct("<4sLQL")


class Zip64EndRecord(NamedTuple):
    """Zip64 end of central directory record, its fixed part: the end record's fields, 64 bits wide."""

    signature: bytes
    record_size: int  # the size of the record after this field
    version_made_by: int
    version_needed: int
    disk: int
    cd_disk: int
    disk_entries: int
    entries: int
    cd_size: int
    cd_offset: int

    SIGNATURE = b"PK\x06\x06"
    FORMAT = struct.Struct("<4sQ2H2L4Q")


class CentralEntry(NamedTuple):
    """Central directory file header, its fixed part (the name, extra field and comment follow)."""

    signature: bytes
    version_made_by: int
    system_made_by: int
    version_needed: int
    system_needed: int
    flags: int
    compression: int
    time: int
    date: int
    crc32: int
    compressed_size: int
    size: int
    name_length: int
    extra_length: int
    comment_length: int
    disk: int  # the part the member's local header lies in
    internal_attributes: int
    external_attributes: int
    offset: int  # where its local header starts, on `disk`

    SIGNATURE = b"PK\x01\x02"
    FORMAT = struct.Struct("<4s4B4HL2L5H2L")


class LocalHeader(NamedTuple):
    """Local file header, its fixed part (the name and extra field follow, then the member's data)."""

    signature: bytes
    version_needed: int
    system_needed: int
    flags: int
    compression: int
    time: int
    date: int
    crc32: int
    compressed_size: int
    size: int
    name_length: int
    extra_length: int

    SIGNATURE = b"PK\x03\x04"
    FORMAT = struct.Struct("<4s2B4HL2L2H")


def _unpack(record_type, buffer: bytes, offset: int = 0):
    return record_type._make(record_type.FORMAT.unpack_from(buffer, offset))


def _pack(record) -> bytes:
    return record.FORMAT.pack(*record)


def _bytes(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


class SplitZipError(PipelineError):
    """Parts that do not join: one missing, truncated, damaged or out of order."""


@dataclass
class Parts:
    """The parts, in order, and where each starts in the joined file."""

    paths: list[Path]
    sizes: list[int]
    starts: list[int]

    @classmethod
    def of(cls, paths: list[Path]) -> Parts:
        sizes = [p.stat().st_size for p in paths]
        return cls(list(paths), sizes, [sum(sizes[:i]) for i in range(len(paths))])

    def absolute(self, disk: int, offset: int, what: str) -> int:
        """Where `what`, at `offset` of part `disk + 1`, lies in the joined file."""
        if disk >= len(self.paths):
            raise SplitZipError(
                f"{self.paths[-1]}: {what} lies in part {disk + 1}, but only {len(self.paths)} parts were given"
            )
        if offset >= self.sizes[disk]:
            raise SplitZipError(
                f"{self.paths[disk]}: {what} starts at byte {offset}, past the end of this part "
                f"(its {_bytes(self.sizes[disk])}): it is truncated; {REDOWNLOAD}"
            )
        return self.starts[disk] + offset


class Extent(NamedTuple):
    """Where one member lies in the joined file: its local header, up to the end of its data."""

    name: str
    disk: int
    start: int
    end: int


def reassemble_split_zip(parts: list[Path], out: Path) -> Path:
    """Join the parts of a split zip (.z01 .. .zip, in that order) into one standard zip at `out`."""
    layout = Parts.of(parts)
    with atomic_path(out) as tmp:
        with open(tmp, "w+b") as joined:
            for part in layout.paths:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, joined, 1 << 22)
            total = joined.tell()
            end = find_end_record(joined, total, layout)
            if end.cd_disk >= len(layout.paths):
                raise SplitZipError(
                    f"{layout.paths[-1]}: the archive says it has more parts than the {len(layout.paths)} given "
                    f"(give every part, .z01 .. .zip; for FSD50K check data.fsd50k.dev_parts / eval_parts)"
                )
            cd_start = layout.absolute(end.cd_disk, end.cd_offset, "the central directory")
            joined.seek(cd_start)
            central, extents = rebase_central_directory(joined.read(end.cd_size), joined, layout)
            if len(extents) != end.entries:
                raise SplitZipError(
                    f"{layout.paths[end.cd_disk]}: its central directory lists {len(extents)} of the "
                    f"{end.entries} members the archive counts: the part is damaged or truncated; {REDOWNLOAD}"
                )
            check_extents(extents, cd_start, layout)
            joined.seek(total)
            joined.write(central)
            write_end_records(joined, total, len(central), len(extents))
        with zipfile.ZipFile(tmp) as check:  # readable as a whole, or it does not become `out`
            check.infolist()
    return out


def find_end_record(joined: BinaryIO, total: int, parts: Parts) -> EndRecord | Zip64EndRecord:
    """The zip64 end record where there is one, else the end record: where the central directory is."""
    tail_size = min(total, (1 << 16) + 4096)  # the end record, its comment (up to 64 KiB), the zip64 locator
    joined.seek(total - tail_size)
    tail = joined.read()
    at = tail.rfind(EndRecord.SIGNATURE)
    if at < 0 or at + EndRecord.FORMAT.size > len(tail):
        raise SplitZipError(f"{parts.paths[-1]}: no zip end record, so the last part is truncated; {REDOWNLOAD}")
    end = _unpack(EndRecord, tail, at)
    locator_at = at - Zip64Locator.FORMAT.size
    if locator_at < 0 or tail[locator_at : locator_at + 4] != Zip64Locator.SIGNATURE:
        return end
    locator = _unpack(Zip64Locator, tail, locator_at)
    if locator.record_disk >= len(parts.paths):
        return end  # then its cd_disk (0xFFFF) is more parts than given: that error
    joined.seek(parts.starts[locator.record_disk] + locator.record_offset)
    record = joined.read(Zip64EndRecord.FORMAT.size)
    if len(record) == Zip64EndRecord.FORMAT.size and record[:4] == Zip64EndRecord.SIGNATURE:
        return _unpack(Zip64EndRecord, record)
    return end


def rebase_central_directory(central: bytes, joined: BinaryIO, parts: Parts) -> tuple[bytes, list[Extent]]:
    """The central directory with every member's position absolute in the joined file (all on disk 0), and
    where each member lies."""
    rebased, extents, pos = bytearray(), [], 0
    size = CentralEntry.FORMAT.size
    while pos + size <= len(central) and central[pos : pos + 4] == CentralEntry.SIGNATURE:
        entry = _unpack(CentralEntry, central, pos)
        name_at = pos + size
        extra_at = name_at + entry.name_length
        comment_at = extra_at + entry.extra_length
        pos = comment_at + entry.comment_length
        record, extent = rebase_entry(entry, central[name_at:extra_at], central[extra_at:comment_at], joined, parts)
        rebased += record + central[comment_at:pos]
        extents.append(extent)
    return bytes(rebased), extents


def rebase_entry(
    entry: CentralEntry, name: bytes, extra: bytes, joined: BinaryIO, parts: Parts
) -> tuple[bytes, Extent]:
    """One central directory header, name and extra field pointing at the member's absolute offset (its
    comment follows unchanged), and where the member lies."""
    values, others = zip64_values(entry, extra)
    disk, offset = values.get("disk", entry.disk), values.get("offset", entry.offset)
    shown = name.decode("utf-8", "replace")[:80]
    what = f"member '{shown}'"
    start = parts.absolute(disk, offset, what)
    joined.seek(start)
    raw = joined.read(LocalHeader.FORMAT.size)
    if len(raw) < LocalHeader.FORMAT.size or raw[:4] != LocalHeader.SIGNATURE:
        raise SplitZipError(
            f"{parts.paths[disk]}: {what} is not at byte {offset}, where the central directory puts it: "
            f"the part is damaged or out of order; {REDOWNLOAD}"
        )
    local = _unpack(LocalHeader, raw)
    compressed = values.get("compressed_size", entry.compressed_size)
    data_end = start + LocalHeader.FORMAT.size + local.name_length + local.extra_length + compressed
    extra = zip64_extra(entry, values, start) + others
    header = entry._replace(disk=0, offset=min(start, U32), extra_length=len(extra))
    return _pack(header) + name + extra, Extent(shown, disk, start, data_end)


def zip64_values(entry: CentralEntry, extra: bytes) -> tuple[dict[str, int], bytes]:
    """The values of the entry's fields that are at their maximum, from its zip64 extra field (which holds
    them in this order, each only when needed), and its other extra fields as they are."""
    needs = [name for name in ("size", "compressed_size", "offset") if getattr(entry, name) == U32]
    needs += ["disk"] if entry.disk == U16 else []
    values, others, pos = {}, b"", 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == ZIP64_EXTRA:
            offset = 0
            for name in needs:
                width = 4 if name == "disk" else 8
                if offset + width <= len(body):
                    values[name] = int.from_bytes(body[offset : offset + width], "little")
                offset += width
        else:
            others += extra[pos : pos + 4 + length]
        pos += 4 + length
    return values, others


def zip64_extra(entry: CentralEntry, values: dict[str, int], start: int) -> bytes:
    """The rebased entry's zip64 extra field: the sizes that were in it before, and the offset if the joined
    file puts it past 4 GiB; empty when neither is."""
    z64 = b""
    for name in ("size", "compressed_size"):
        if getattr(entry, name) == U32:
            z64 += struct.pack("<Q", values.get(name, U32))
    if start >= U32:
        z64 += struct.pack("<Q", start)
    return struct.pack("<2H", ZIP64_EXTRA, len(z64)) + z64 if z64 else b""


def check_extents(extents: list[Extent], cd_start: int, parts: Parts) -> None:
    """Each member's data ends before the next member, or the central directory, starts. A part cut short
    (an interrupted download) shows here: the member that ran across its end runs into the next one."""
    ordered = sorted(extents, key=lambda e: e.start)
    for member, following in zip(ordered, [*ordered[1:], None]):
        limit = following.start if following else cd_start
        if member.end > limit:
            # the part cut short is the one the member starts in, or one it spans before the next member's
            last = following.disk - 1 if following and following.disk > member.disk + 1 else member.disk
            which = "it is" if last == member.disk else f"it, or a part up to {parts.paths[last].name}, is"
            raise SplitZipError(
                f"{parts.paths[member.disk]}: member '{member.name}' runs {_bytes(member.end - limit)} into "
                f"what follows it: {which} truncated; {REDOWNLOAD}"
            )


def write_end_records(joined: BinaryIO, cd_start: int, cd_size: int, count: int) -> None:
    """The end records of the joined file, its central directory at `cd_start`: zip64 ones first where a
    value does not fit the end record's fields."""
    if count >= U16 or cd_start >= U32 or cd_size >= U32:
        record = Zip64EndRecord(
            Zip64EndRecord.SIGNATURE,
            record_size=Zip64EndRecord.FORMAT.size - 12,  # counts neither the signature nor this field
            version_made_by=ZIP64_VERSION,
            version_needed=ZIP64_VERSION,
            disk=0,
            cd_disk=0,
            disk_entries=count,
            entries=count,
            cd_size=cd_size,
            cd_offset=cd_start,
        )
        joined.write(_pack(record))
        joined.write(
            _pack(Zip64Locator(Zip64Locator.SIGNATURE, record_disk=0, record_offset=cd_start + cd_size, disks=1))
        )
    entries = min(count, U16)
    end = EndRecord(
        EndRecord.SIGNATURE,
        disk=0,
        cd_disk=0,
        disk_entries=entries,
        entries=entries,
        cd_size=min(cd_size, U32),
        cd_offset=min(cd_start, U32),
        comment_length=0,
    )
    joined.write(_pack(end))
