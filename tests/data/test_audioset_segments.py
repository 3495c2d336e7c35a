"""pipeline.data.audioset.segments: segment CSV rows -> segments, malformed rows -> rejected entries."""

from __future__ import annotations

from pipeline.data.audioset.segments import Segment, parse_segments, valid_ytid
from pipeline.data.listing import Rejected
from tests.data.test_audioset import HEADER, OK1, OK2, OK3, OK4


def test_segment_csv_parsing_good_and_malformed_rows(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_text(
        HEADER
        + "\n".join(
            [
                f'{OK1}, 30.000, 40.000, "/m/09x0r,/m/05zppz"',  # line 4
                f'{OK2},0,10,"/m/04rlf"',  # line 5: no spaces is fine too
                f"{OK3}, 30.000, 40.000",  # 6: 3 fields
                'abc;rm -rf /x, 0.000, 10.000, "/m/09x0r"',  # 7: hostile id
                f'{OK4}, thirty, 40.000, "/m/09x0r"',  # 8
                f'{OK4}, 40.000, 30.000, "/m/09x0r"',  # 9: end before start
                f'{OK4}, 0.000, 10.000, ""',  # 10: no labels
                f'{OK4}, 0.000, 10.000, "/m/banjo"',  # 11: not a class
                "",
                "# a comment",
            ]
        )
        + "\n"
    )
    rows = parse_segments(path, "balanced_train", {"/m/09x0r", "/m/05zppz", "/m/04rlf"})
    good = [r for r in rows if isinstance(r, Segment)]
    assert [(s.ytid, s.start, s.end, s.labels, s.clip_id) for s in good] == [
        (OK1, 30.0, 40.0, ("/m/09x0r", "/m/05zppz"), f"Y{OK1}_30.000"),
        (OK2, 0.0, 10.0, ("/m/04rlf",), f"Y{OK2}_0.000"),
    ]
    bad = [r for r in rows if isinstance(r, Rejected)]
    assert [(r.reason, r.source.rsplit(" ", 1)[1]) for r in bad] == [
        ("malformed_row", "6"),
        ("malformed_row", "7"),
        ("malformed_row", "8"),
        ("malformed_row", "9"),
        ("empty_labels", "10"),
        ("unknown_label", "11"),
    ]
    assert all(r.detail.startswith(f"{path} line ") and "\n" not in r.detail for r in bad)
    assert "not 11 characters" in bad[1].detail


def test_ytid_with_a_trailing_newline_is_rejected():
    assert valid_ytid("abcdefghijk") and not valid_ytid("abcdefghijk\n") and not valid_ytid("abc;rm -rf /x")
