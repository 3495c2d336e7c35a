"""Sound events against ground truth: `psla tag --events` on long demo recordings, scored with sed_eval.

    .venv/bin/python -m benchmarks.events --model models/wa/seed-1.pt --thresholds metrics/thresholds.json
        [--recordings 20 --seconds 60 --seed 0 --out-dir reports/events --audio-dir DIR]

The demo's 3 s clips hold events of 50-100 % of the clip, so they cannot tell events from clip tags.
Here `--recordings` recordings of `--seconds` each are synthesised by the demo generator itself
(`pipeline.data.demo.synthesize`: its `_event_signal` sounds, unit-RMS events scaled to a gain drawn
from `data.demo.snr_db`, its pink background at `BACKGROUND_DB`, its ramps and peak limit, 16 kHz),
with short events at known times (`recording_specs`):

- about one event per `SECONDS_PER_EVENT` seconds, each of a sounding demo class drawn uniformly,
  lasting `EVENT_SECONDS` (1-4 s), at a uniform onset; events of different families overlap (at most
  `MAX_OVERLAP` at once) and silence (background only) lies between them;
- two events that share a label (the class or one of its ancestors: two noises, two siren events, a
  chirp and a harmonic stack, both "Sine wave") are at least `LABEL_GAP` s apart, so each label's
  reference events never overlap or touch and no detector merge (`max_gap` 0.7 s) can join two of them.

Ground truth (`reference_events`): each event's class and also each of its demo ancestors over the
same interval, as the demo's clip labels are (an event of "Civil defense siren" is also one of "Siren"
and "Alarm"; the model is trained to say so). Written as the DCASE TSV `truth.tsv` (filename onset
offset event_label) beside the report, with the predicted events as `predicted.tsv`.

Ours: each recording through the library as `psla tag --events` runs it (`load_tagger`, `tag_file` with
the default windows, the frame sink feeding `EventDetector` with the per-class thresholds and the
default `min_duration`, `max_gap`). Baseline: clip tags only, a class present over the whole
recording [0, duration] when the recording's clip score (`TagResult.max`, the highest window score)
reaches its threshold (`psla tag --decide`, drawn as one event).

Scores (`score`, sed_eval, micro-averaged over all classes and recordings: the "overall" metrics):

- segment-based, 1 s segments: F1 and error rate (substitutions + deletions + insertions over the
  reference's active class-segments);
- event-based: F1 (and error rate) with onset collar `COLLARS[0]` = 1.0 s and a wider `COLLARS[1]` =
  2.0 s, offsets evaluated with `percentage_of_length` 0.5 (an offset matches within the collar or
  half the reference event's length, whichever is larger), optimal matching. Why: frame scores come
  every 0.6 s and are window averages (3 s windows every 1.5 s), so a detected boundary sits up to one
  frame (0.6 s) from the true one before any blur; a 1 s collar is one frame plus margin, 2 s asks only
  whether the event was found at about the right time. Offsets stay evaluated, so an event that runs on
  long after the sound stopped (what a whole-recording tag is) does not count; half the length (DCASE's
  default is 20 %) because 20 % of a 1 s event is a third of a frame.

Writes only under `--out-dir`: `events.json` (settings, counts, both systems' metrics, overall and per
class), `events.md` (the table), `truth.tsv`, `predicted.tsv`; prints the table. The recordings go to
`--audio-dir` (default: a temporary folder, removed). Deterministic from `--seed`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psla` sets it, before torch loads

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.core.io import atomic_write_json, atomic_write_text, file_sha256  # noqa: E402
from pipeline.data.demo import _SOUNDING, SAMPLE_RATE, ClipSpec, _ancestors, class_table, synthesize  # noqa: E402
from pipeline.data.sections.demo import DemoData  # noqa: E402
from pipeline.tagging.decide import thresholds_for  # noqa: E402
from pipeline.tagging.events import MAX_GAP, MIN_DURATION, Event, EventDetector, dcase_header, dcase_rows  # noqa: E402
from pipeline.tagging.tag import load_tagger, tag_file  # noqa: E402

EVENT_SECONDS = (1.0, 4.0)  # uniform duration of one event
SECONDS_PER_EVENT = 5.0  # events per recording: round(seconds / this)
LABEL_GAP = 1.5  # seconds at least between two events that share a label (class or ancestor)
MAX_OVERLAP = 2  # events sounding at once, at most
TRIES = 200  # placements tried per event before it is left out
SEGMENT = 1.0  # seconds: sed_eval segment-based resolution
COLLARS = (1.0, 2.0)  # seconds: event-based onset (and minimum offset) collars, the first the headline
OFFSET_FRACTION = 0.5  # sed_eval percentage_of_length
SYSTEMS = {"ours": "psla tag --events", "baseline": "whole-recording clip tags"}

_NAMES = [row["display_name"] for row in class_table()]
_INDEX = {row["mid"]: row["index"] for row in class_table()}


@dataclass(frozen=True)
class Recording:
    """One long test recording: its file name, length, the demo spec that synthesises it."""

    filename: str
    seconds: float
    spec: ClipSpec


def _labels(mid: str) -> set[str]:
    return {mid, *_ancestors(mid)}


def _fits(events: list[tuple], mid: str, onset: float, offset: float) -> bool:
    """Whether an event of `mid` over [onset, offset] keeps the rules against the events placed so far."""
    overlapping = []
    for other, o_on, o_dur, *_ in events:
        o_off = o_on + o_dur
        if _labels(other) & _labels(mid) and onset < o_off + LABEL_GAP and o_on < offset + LABEL_GAP:
            return False
        if onset < o_off and o_on < offset:
            overlapping.append((max(onset, o_on), min(offset, o_off)))
    # MAX_OVERLAP events at once already anywhere in [onset, offset]: this one would add another
    starts = sorted(a for a, _ in overlapping)
    return all(sum(a <= s < b for a, b in overlapping) < MAX_OVERLAP for s in starts)


def recording_specs(count: int, seconds: float, seed: int, demo: DemoData | None = None) -> list[Recording]:
    """`count` recordings of `seconds`, each a demo ClipSpec (split eval, index i) with its events
    placed by the rules of the module docstring; deterministic from `seed`."""
    demo = demo or DemoData()
    lo, hi = (float(v) for v in demo.snr_db)
    wanted = max(1, int(round(seconds / SECONDS_PER_EVENT)))
    shortest, longest = EVENT_SECONDS[0], min(EVENT_SECONDS[1], seconds)
    if seconds < shortest:
        raise ValueError(f"--seconds {seconds}: recordings must be at least {shortest:g} s long")
    recordings = []
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE7E47, i]))
        events: list[tuple] = []
        for _ in range(wanted):
            for _try in range(TRIES):
                mid = _SOUNDING[int(rng.integers(len(_SOUNDING)))]
                duration = round(float(rng.uniform(shortest, longest)), 3)
                onset = round(float(rng.uniform(0.0, seconds - duration)), 3)
                gain, event_seed = float(rng.uniform(lo, hi)), int(rng.integers(0, 2**63 - 1))
                if _fits(events, mid, onset, onset + duration):
                    events.append((mid, onset, duration, round(gain, 3), event_seed))
                    break
        events.sort(key=lambda e: (e[1], _INDEX[e[0]]))
        labels = tuple(sorted({m for e in events for m in _labels(e[0])}, key=_INDEX.__getitem__))
        spec = ClipSpec(f"events-{seed}-{i:03d}", "eval", i, tuple(events), labels, labels)
        recordings.append(Recording(f"{spec.clip_id}.flac", float(seconds), spec))
    return recordings


def synthesize_recording(recording: Recording, seed: int) -> np.ndarray:
    """The recording's float32 16 kHz wave, by the demo's own `synthesize` (background seeded by `seed`
    and the recording's index)."""
    return synthesize(recording.spec, {"clip_seconds": recording.seconds, "seed": seed})


def reference_events(recording: Recording) -> list[Event]:
    """Ground truth: each event as its class and each of its ancestors, sorted by onset then class."""
    out = [
        Event(onset, round(onset + duration, 3), _INDEX[m], 1.0)
        for mid, onset, duration, *_ in recording.spec.events
        for m in _labels(mid)
    ]
    return sorted(out, key=lambda e: (e.onset, e.class_index))


def _dicts(filename: str, events: list[Event], names) -> list[dict]:
    return [
        {"filename": filename, "event_label": names[e.class_index], "onset": e.onset, "offset": e.offset}
        for e in events
    ]


def _overall(metrics) -> dict:
    overall = metrics.results_overall_metrics()
    f, er = overall["f_measure"], overall["error_rate"]
    return {
        "f1": round(float(f["f_measure"]), 4),
        "precision": round(float(f["precision"]), 4),
        "recall": round(float(f["recall"]), 4),
        "error_rate": round(float(er["error_rate"]), 4),
    }


def _class_f1(metrics) -> dict:
    return {
        label: round(float(values["f_measure"]["f_measure"]), 4)
        for label, values in metrics.results_class_wise_metrics().items()
        if values["f_measure"]["f_measure"] == values["f_measure"]["f_measure"]  # not NaN: some reference/output
    }


def score(
    reference: dict[str, list[dict]],
    estimated: dict[str, list[dict]],
    labels: list[str],
    durations: dict[str, float],
    collars=COLLARS,
    segment: float = SEGMENT,
    offset_fraction: float = OFFSET_FRACTION,
) -> dict:
    """sed_eval's micro-averaged metrics of `estimated` against `reference` (per file: lists of
    `{"filename", "event_label", "onset", "offset"}`), file by file over `durations`' files:
    `{"segment": {f1, precision, recall, error_rate, class_f1}, "event": {"<collar>": {...}}}`."""
    import sed_eval  # a few hundred ms of dcase_util: only when scoring

    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=float(segment))
    event_metrics = {
        collar: sed_eval.sound_event.EventBasedMetrics(
            labels,
            t_collar=float(collar),
            percentage_of_length=float(offset_fraction),
            evaluate_onset=True,
            evaluate_offset=True,
        )
        for collar in collars
    }
    for filename, duration in durations.items():
        ref, est = reference.get(filename, []), estimated.get(filename, [])
        segment_metrics.evaluate(ref, est, evaluated_length_seconds=duration)
        for metrics in event_metrics.values():
            metrics.evaluate(ref, est)
    return {
        "segment": {**_overall(segment_metrics), "class_f1": _class_f1(segment_metrics)},
        "event": {
            f"{collar:g}": {**_overall(metrics), "class_f1": _class_f1(metrics)}
            for collar, metrics in event_metrics.items()
        },
    }


def detect(tagger, path: Path, thresholds: np.ndarray) -> tuple:
    """`(TagResult, events)` of one file, as `psla tag --events` finds them (default windows and options)."""
    detector = EventDetector(thresholds, MIN_DURATION, MAX_GAP)
    found: list[Event] = []
    result = tag_file(tagger, path, frame_sink=lambda chunk: found.extend(detector.add(chunk)))
    return result, found + detector.finish()


def tag_recordings(tagger, thresholds: np.ndarray, recordings: list[Recording], audio_dir: Path, seed: int):
    """`(ours, baseline, durations)`: per file name, the detected events and the whole-recording events."""
    ours, baseline, durations = {}, {}, {}
    for recording in recordings:
        path = audio_dir / recording.filename
        if not path.exists():
            sf.write(str(path), synthesize_recording(recording, seed), SAMPLE_RATE, subtype="PCM_16")
        result, ours[recording.filename] = detect(tagger, path, thresholds)
        baseline[recording.filename] = [
            Event(0.0, round(result.duration, 3), c, float(result.max[c]))
            for c in range(len(thresholds))
            if result.max[c] >= thresholds[c]
        ]
        durations[recording.filename] = result.duration
    return ours, baseline, durations


def table(results: dict, collars=COLLARS) -> str:
    """A Markdown table: each system's segment F1 / ER and event F1 at each collar."""
    head = ["system", f"segment F1 ({SEGMENT:g} s)", "segment ER"] + [f"event F1 (collar {c:g} s)" for c in collars]
    rows = [head, ["---"] + ["---:"] * (len(head) - 1)]
    for key, name in SYSTEMS.items():
        r = results[key]
        rows.append(
            [name, f"{r['segment']['f1']:.3f}", f"{r['segment']['error_rate']:.3f}"]
            + [f"{r['event'][f'{c:g}']['f1']:.3f}" for c in collars]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _tsv(events_by_file: dict[str, list[Event]], names) -> str:
    return dcase_header() + "".join(dcase_rows(f, events, names) for f, events in events_by_file.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint (or export) of the demo model")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--thresholds", metavar="FILE", help="the evaluate stage's metrics/thresholds.json")
    source.add_argument("--threshold", type=float, metavar="T", help="one threshold for every class")
    parser.add_argument("--rule", default="f1", help="which thresholds of the file (default: f1)")
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="reports/events", help="where the report goes (only there)")
    parser.add_argument("--audio-dir", help="keep the recordings there (default: a temporary folder)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        run(args)
    except PipelineError as err:
        raise SystemExit(f"error: {err}") from None


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    tagger = load_tagger(args.model, args.device)
    thresholds, origin = thresholds_for(tagger, args.thresholds, args.threshold, args.rule)
    names = list(tagger.class_names)
    if names != _NAMES:
        raise SystemExit(f"{args.model}: not a demo model (its classes are not the demo's {len(_NAMES)})")
    recordings = recording_specs(args.recordings, args.seconds, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        audio_dir = Path(args.audio_dir or tmp)
        audio_dir.mkdir(parents=True, exist_ok=True)
        ours, baseline, durations = tag_recordings(tagger, thresholds, recordings, audio_dir, args.seed)
    truth = {r.filename: reference_events(r) for r in recordings}
    reference = {f: _dicts(f, events, names) for f, events in truth.items()}
    results = {
        key: score(reference, {f: _dicts(f, e, names) for f, e in found.items()}, names, durations)
        for key, found in (("ours", ours), ("baseline", baseline))
    }
    window, hop = tagger.default_windows()
    document = {
        "model": args.model,
        "model_sha256": file_sha256(args.model) if Path(args.model).is_file() else None,
        "thresholds": origin,
        "recordings": args.recordings,
        "seconds": args.seconds,
        "seed": args.seed,
        "events": sum(len(r.spec.events) for r in recordings),
        "reference_events": sum(len(e) for e in truth.values()),
        "detected_events": sum(len(e) for e in ours.values()),
        "baseline_events": sum(len(e) for e in baseline.values()),
        "generator": {
            "event_seconds": list(EVENT_SECONDS),
            "seconds_per_event": SECONDS_PER_EVENT,
            "label_gap": LABEL_GAP,
            "max_overlap": MAX_OVERLAP,
            "snr_db": list(DemoData().snr_db),
            "reference": "each event's class and its demo ancestors",
        },
        "tagging": {"window": window, "hop": hop, "min_duration": MIN_DURATION, "max_gap": MAX_GAP},
        "scoring": {
            "package": "sed_eval",
            "average": "micro (overall)",
            "segment_seconds": SEGMENT,
            "t_collar": list(COLLARS),
            "percentage_of_length": OFFSET_FRACTION,
            "evaluate_offset": True,
        },
        "systems": SYSTEMS,
        "results": results,
    }
    text = table(results)
    out = Path(args.out_dir)
    atomic_write_json(out / "events.json", document)
    atomic_write_text(
        out / "events.md",
        f"# Sound events against ground truth\n\n"
        f"`{args.model}`, thresholds: {origin}. {args.recordings} demo recordings of {args.seconds:g} s "
        f"(seed {args.seed}), {document['events']} events ({document['reference_events']} reference events "
        f"with ancestors); sed_eval, micro-averaged; event-based: onset collar, offset within the collar or "
        f"{OFFSET_FRACTION:.0%} of the event's length.\n\n{text}\n",
    )
    atomic_write_text(out / "truth.tsv", _tsv(truth, names))
    atomic_write_text(out / "predicted.tsv", _tsv(ours, names))
    print(
        f"events: {args.recordings} recordings x {args.seconds:g} s, {document['events']} events "
        f"({document['reference_events']} with ancestors), {document['detected_events']} detected; "
        f"thresholds: {origin}; {time.perf_counter() - start:.0f} s"
    )
    print(text)
    print(f"wrote {out}/events.json, events.md, truth.tsv, predicted.tsv")


if __name__ == "__main__":
    main()
