"""`python -m pipeline.tagging.plot`: a PNG of one file's frame scores and events, reference events drawn
from a DCASE TSV; one-line errors without thresholds or with a TSV of foreign labels."""

import pytest
import soundfile as sf
import torch

from benchmarks.events import _tsv, recording_specs, reference_events, synthesize_recording
from pipeline.core.params import Params
from pipeline.data.classes import ClassList
from pipeline.data.demo import SAMPLE_RATE, class_table
from pipeline.tagging.plot import main, read_truth
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, checkpoint_record, save_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.model import create_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weights demo-class model of 1 s clips (the tiny preset's input length), a 10 s demo recording
    and its ground truth as a DCASE TSV."""
    root = tmp_path_factory.mktemp("plot")
    params = Params()
    cfg = params.model.model_copy(update={"pretrained": "none"})
    features = params.features.model_copy(update={"target_length": 50})
    classes = ClassList(*(tuple(row[k] for row in class_table()) for k in ("mid", "display_name")))
    torch.manual_seed(0)
    model = create_model(cfg, len(classes)).eval()
    record = checkpoint_record(cfg, classes, features, Normaliser(params.features.paper_mean, 1.0), model)
    save_checkpoint(root / "model.pt", {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), **record})
    (recording,) = recording_specs(1, 10.0, seed=2)
    sf.write(str(root / recording.filename), synthesize_recording(recording, 2), SAMPLE_RATE, subtype="PCM_16")
    (root / "truth.tsv").write_text(_tsv({recording.filename: reference_events(recording)}, classes.names))
    return root, root / recording.filename, reference_events(recording)


def test_writes_a_png_of_frames_events_and_truth(tiny, capsys):
    root, audio, truth = tiny
    out = root / "figures" / "frames.png"
    args = [str(audio), "--model", str(root / "model.pt"), "--threshold", "0.5", "--truth", str(root / "truth.tsv")]
    main([*args, "--classes", "3", "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert list(out.parent.iterdir()) == [out]  # atomic: no temporary left beside it
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ") and "events of" in line and "--threshold 0.5" in line
    names = [row["display_name"] for row in class_table()]
    assert read_truth(root / "truth.tsv", audio, names) == truth
    assert read_truth(root / "truth.tsv", "other.flac", names) == []


def test_one_line_errors(tiny, capsys):
    root, audio, _ = tiny
    with pytest.raises(SystemExit) as exit_:
        main([str(audio), "--model", str(root / "model.pt"), "--out", str(root / "none.png")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "no thresholds to decide with" in err
    assert not (root / "none.png").exists()

    (root / "foreign.tsv").write_text(f"filename\tonset\toffset\tevent_label\n{audio.name}\t1.0\t2.0\tDog\n")
    with pytest.raises(SystemExit):
        main(
            [
                str(audio),
                "--model",
                str(root / "model.pt"),
                "--threshold",
                "0.5",
                "--out",
                str(root / "x.png"),
                "--truth",
                str(root / "foreign.tsv"),
            ]
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'Dog' is not one of the model's classes" in err
