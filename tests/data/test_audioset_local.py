"""pipeline.data.audioset.local: clips already on disk (`source: local`), found by a template, cut or not."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.data.test_audioset import OK1, OK3, _params, _prepare, remote  # noqa: F401  (remote: the shared fixture)

# every request goes to the test's own 127.0.0.1 server, never through a proxy
pytestmark = pytest.mark.usefixtures("no_proxy")


def test_local_directory_source_with_templates(tmp_path, remote):
    local = tmp_path / "clips"
    local.mkdir()
    t = np.arange(441000) / 44100
    sf.write(str(local / f"{OK3}_4.000_14.000.flac"), np.stack([np.sin(t), np.cos(t)], 1) * 0.1, 44100)
    params = _params(tmp_path, remote, source="local", local_dir=str(local))
    manifest, report = _prepare(params, "eval", tmp_path)
    assert [e.clip_id for e in manifest] == [f"Y{OK3}_4.000"]
    assert report.skipped_by_reason == {"missing_file": 1} and f"{OK1}_0.000_10.000.flac" in report.skips[0]["detail"]
    info = sf.info(str(tmp_path / "data/audio/eval" / f"Y{OK3}_4.000.flac"))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 160000)
    # whole videos named Y<id>.wav, cut here
    videos = tmp_path / "videos"
    videos.mkdir()
    level = (np.arange(20 * 8000) // 8000 * 0.03).astype(np.float32)
    sf.write(str(videos / f"Y{OK1}.wav"), level, 8000)
    sf.write(str(videos / f"Y{OK3}.wav"), level, 8000)
    params = _params(
        tmp_path, remote, source="local", local_dir=str(videos), local_template="Y{ytid}.wav", local_cut=True
    )
    manifest, report = _prepare(params, "eval", tmp_path / "second")
    assert report.written == 2
    wave, _ = sf.read(str(tmp_path / "second/data/audio/eval" / f"Y{OK3}_4.000.flac"))
    assert len(wave) == 160000 and np.allclose(wave[20000:28000], 0.15, atol=2e-3)
