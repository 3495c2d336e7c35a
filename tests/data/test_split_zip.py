"""Split zips joined into one standard zip: archives written by Info-ZIP's `zip -s` and by a spanning
writer here (zip64 records, extra fields and disk numbers); parts missing, cut short, damaged or out of order."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
import zlib

import numpy as np
import pytest

from pipeline.data.split_zip import (
    U16,
    U32,
    CentralEntry,
    EndRecord,
    LocalHeader,
    SplitZipError,
    Zip64EndRecord,
    Zip64Locator,
    reassemble_split_zip,
    write_end_records,
    zip64_extra,
    zip64_values,
)

SPANNING = b"PK\x07\x08"  # what a split zip's first part starts with


def spanned(members: dict[str, bytes], part_size: int, zip64: bool = False) -> list[bytes]:
    """A split zip as `zip -s` writes one, of stored members: the archive's bytes cut every `part_size`
    bytes, every position recorded as (part, offset in that part), the central directory and end records
    in the last part. zip64: every entry's sizes, offset and disk in its zip64 extra field, and zip64 end
    records."""
    stream = bytearray(SPANNING)
    entries = []
    for name, data in members.items():
        offset, encoded, crc = len(stream), name.encode(), zlib.crc32(data)
        size = U32 if zip64 else len(data)
        extra = struct.pack("<2H2Q", 1, 16, len(data), len(data)) if zip64 else b""
        local = LocalHeader(LocalHeader.SIGNATURE, 45, 0, 0, 0, 0, 33, crc, size, size, len(encoded), len(extra))
        stream += LocalHeader.FORMAT.pack(*local) + encoded + extra + data
        entries.append((encoded, crc, len(data), divmod(offset, part_size)))
    parts = [bytearray(stream[i : i + part_size]) for i in range(0, len(stream), part_size)]
    last, cd_offset = len(parts) - 1, len(parts[-1])
    central = bytearray()
    for encoded, crc, length, (disk, offset) in entries:
        extra = struct.pack("<2H3QL", 1, 28, length, length, offset, disk) if zip64 else b""
        fields = (U32, U32, U32, U16) if zip64 else (length, length, offset, disk)
        size, compressed, offset_field, disk_field = fields
        entry = CentralEntry(
            CentralEntry.SIGNATURE, 45, 3, 45, 0, 0, 0, 0, 33, crc, compressed, size, len(encoded), len(extra), 0,
            disk_field, 0, 0, offset_field,
        )  # fmt: skip
        central += CentralEntry.FORMAT.pack(*entry) + encoded + extra
    parts[-1] += central
    count = len(entries)
    if zip64:
        record_at = len(parts[-1])
        parts[-1] += Zip64EndRecord.FORMAT.pack(
            Zip64EndRecord.SIGNATURE, 44, 45, 45, last, last, count, count, len(central), cd_offset
        )
        parts[-1] += Zip64Locator.FORMAT.pack(Zip64Locator.SIGNATURE, last, record_at, last + 1)
        parts[-1] += EndRecord.FORMAT.pack(EndRecord.SIGNATURE, U16, U16, U16, U16, U32, U32, 0)
    else:
        parts[-1] += EndRecord.FORMAT.pack(EndRecord.SIGNATURE, last, last, count, count, len(central), cd_offset, 0)
    return [bytes(p) for p in parts]


def _members(n: int = 6, size: int = 3000) -> dict[str, bytes]:
    rng = np.random.default_rng(n)
    return {
        f"FSD50K.dev_audio/{i}.wav": rng.integers(0, 256, size + 17 * i, dtype=np.uint8).tobytes() for i in range(n)
    }


def _write(folder, chunks: list[bytes]) -> list:
    """The parts in `folder`, named as Info-ZIP names them: a.z01 .. a.zNN, then a.zip."""
    folder.mkdir(exist_ok=True)
    names = [f"a.z{i:02d}" for i in range(1, len(chunks))] + ["a.zip"]
    for name, chunk in zip(names, chunks):
        (folder / name).write_bytes(chunk)
    return [folder / n for n in names]


def _joined(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every member's CRC checks
        return {info.filename: zf.read(info) for info in zf.infolist()}


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP's zip not installed")
@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_joins_split_zips_written_by_info_zip(tmp_path, zip64):
    source = tmp_path / "FSD50K.dev_audio"
    source.mkdir()
    for name, data in _members(5, 40000).items():
        (tmp_path / name).write_bytes(data)
    subprocess.run(
        ["zip", "-q", "-r", "-s", "64k", *(["-fz"] if zip64 else []), "FSD50K.dev_audio.zip", "FSD50K.dev_audio"],
        cwd=tmp_path,
        check=True,
    )
    parts = sorted(tmp_path.glob("FSD50K.dev_audio.z[0-9]*")) + [tmp_path / "FSD50K.dev_audio.zip"]
    assert len(parts) >= 3
    joined = _joined(reassemble_split_zip(parts, tmp_path / "joined.zip"))
    for i in range(5):
        assert joined[f"FSD50K.dev_audio/{i}.wav"] == (source / f"{i}.wav").read_bytes()


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_joins_split_zips_with_members_across_parts(tmp_path, zip64):
    members = _members()
    parts = _write(tmp_path, spanned(members, 4000, zip64))
    assert len(parts) == 5  # members run across the ends of parts
    assert _joined(reassemble_split_zip(parts, tmp_path / "joined.zip")) == members


def test_over_65535_members_get_zip64_end_records(tmp_path):
    members = {f"{i:05x}": bytes([i % 251]) for i in range(U16 + 10)}
    parts = _write(tmp_path, spanned(members, 1 << 20, zip64=True))
    out = reassemble_split_zip(parts, tmp_path / "joined.zip")
    tail = out.read_bytes()[-200:]
    assert Zip64EndRecord.SIGNATURE in tail and Zip64Locator.SIGNATURE in tail
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert len(infos) == len(members) and zf.read(infos[-1]) == members[infos[-1].filename]


def test_offsets_past_4_gib_go_to_zip64_fields():
    entry = CentralEntry(CentralEntry.SIGNATURE, 45, 3, 45, 0, 0, 0, 0, 33, 0, U32, 10, 1, 0, 0, 0, 0, 0, 0)
    values, others = zip64_values(entry, struct.pack("<2HQ", 1, 8, 5 << 32) + b"\x55\x54\x01\x00\x07")
    assert values == {"compressed_size": 5 << 32} and others == b"\x55\x54\x01\x00\x07"  # other fields kept
    assert zip64_extra(entry, values, 6 << 32) == struct.pack("<2H2Q", 1, 16, 5 << 32, 6 << 32)
    assert zip64_extra(entry._replace(compressed_size=10), {}, 100) == b""
    buffer = io.BytesIO()
    write_end_records(buffer, 6 << 32, 1000, 3)
    record = Zip64EndRecord._make(Zip64EndRecord.FORMAT.unpack_from(buffer.getvalue()))
    assert (record.entries, record.cd_size, record.cd_offset) == (3, 1000, 6 << 32)
    end = EndRecord._make(EndRecord.FORMAT.unpack_from(buffer.getvalue(), buffer.tell() - EndRecord.FORMAT.size))
    assert (end.entries, end.cd_offset) == (3, U32)


def _error(parts, out) -> str:
    with pytest.raises(SplitZipError) as err:
        reassemble_split_zip(parts, out)
    assert not out.exists()  # no half-joined archive left behind
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_a_part_cut_short_names_it_and_the_fix(tmp_path, zip64):
    chunks = spanned(_members(), 4000, zip64)
    for part, cut in ((0, 5), (1, 1), (2, 2500), (3, 3999)):  # .z01 .. .z04, by a byte to almost all
        folder = tmp_path / f"{part}-{cut}"
        parts = _write(folder, [c[:-cut] if i == part else c for i, c in enumerate(chunks)])
        message = _error(parts, folder / "joined.zip")
        assert message.startswith(f"{parts[part]}: ") and "truncated; delete it and download it again" in message
    parts = _write(tmp_path, [*chunks[:-1], chunks[-1][:-10]])  # the last part, end record gone
    message = _error(parts, tmp_path / "joined.zip")
    assert message == f"{parts[-1]}: no zip end record, so the last part is truncated; delete it and download it again"


def test_a_damaged_missing_or_misplaced_part_is_named(tmp_path):
    chunks = spanned(_members(), 4000)
    damaged = bytearray(chunks[2])
    offset = damaged.find(LocalHeader.SIGNATURE)
    damaged[offset : offset + 4] = b"\0\0\0\0"
    parts = _write(tmp_path / "damaged", [*chunks[:2], bytes(damaged), *chunks[3:]])
    message = _error(parts, tmp_path / "joined.zip")
    assert message.startswith(f"{parts[2]}: member ") and f"is not at byte {offset}" in message
    assert message.endswith("damaged or out of order; delete it and download it again")

    parts = _write(tmp_path / "missing", chunks[1:])
    assert "more parts than the 4 given" in _error(parts, tmp_path / "joined.zip")

    parts = _write(tmp_path / "order", [chunks[0], chunks[2], chunks[1], *chunks[3:]])
    assert "damaged or out of order" in _error(parts, tmp_path / "joined.zip")

    end = chunks[-1].rfind(EndRecord.SIGNATURE)
    record = EndRecord._make(EndRecord.FORMAT.unpack_from(chunks[-1], end))._replace(entries=7, disk_entries=7)
    parts = _write(tmp_path / "count", [*chunks[:-1], chunks[-1][:end] + EndRecord.FORMAT.pack(*record)])
    assert _error(parts, tmp_path / "joined.zip") == (
        f"{parts[-1]}: its central directory lists 6 of the 7 members the archive counts: the part is damaged "
        "or truncated; delete it and download it again"
    )
