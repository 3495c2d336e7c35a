"""pipeline.data.audioset.metadata: the class list, ontology and segment lists, downloaded once."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.data.registry import class_metadata, list_split
from tests.data.test_audioset import CLASSES, OK1, OK3, ONTOLOGY, _params, remote  # noqa: F401  (remote: the shared fixture)

# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


def test_metadata_is_downloaded_once_over_http(tmp_path, remote):
    params = _params(tmp_path, remote)
    classes, ontology = class_metadata(params)
    assert classes.mids == ("/m/09x0r", "/m/05zppz", "/m/04rlf", "/m/0jbk") and ontology == ONTOLOGY
    meta = tmp_path / "data/downloads/audioset"
    assert (meta / "class_labels_indices.csv").read_text() == CLASSES
    listing = list_split(params, "eval", classes)
    assert [e.clip_id for e in listing.entries] == [f"Y{OK3}_4.000", f"Y{OK1}_0.000"]
    class_metadata(params)
    list_split(params, "eval", classes)
    assert Counter(p for p, _ in remote.requests) == {
        "/csv/class_labels_indices.csv": 1,
        "/ontology.json": 1,
        "/csv/eval_segments.csv": 1,
    }
