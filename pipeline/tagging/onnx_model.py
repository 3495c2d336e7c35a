"""ONNX models of `psla export --format onnx`, run with onnxruntime: a trained model that leaves Python
(any onnxruntime binding runs it: C, C++, C#, Java, JavaScript, Rust, ...).

The graph, one file with nothing beside it:

- input `fbank`, float32 `[batch, time, mel]`: the Kaldi fbank as the features stage computes it (the
  options are in the metadata), NOT normalised: the normalisation `(x - mean) / std` is inside the graph;
- outputs `clip`, float32 `[batch, classes]`, the clip probabilities (the torch model's `forward`), and
  `frames`, float32 `[batch, frames, classes]`, the per-frame class probabilities (`clip_and_frames`),
  one frame per backbone time step (the time axis divided by the backbone's stride, 32, rounded up);
- batch and time are dynamic: any number of windows of any length;
- metadata (`metadata_props`), one key `psla` holding JSON: `format` ("psla-onnx/1"), `class_ids`,
  `class_names`, `fbank_options` (torchaudio.compliance.kaldi.fbank keyword arguments), `target_length`,
  `norm` ({"mean", "std"}, already applied inside the graph, recorded for the record), `thresholds`
  (per-class decision thresholds with the rule and split they were chosen by, or null), `provenance`
  (source checkpoint SHA-256, git commit, eval mAP when known, ...), `model_config` (the architecture)
  and `export` (exporter, opset, torch version).

`OnnxNetwork(path)` loads one (one-line `PipelineError`s for a missing, truncated or foreign file, and for
metadata that disagrees with the graph) and `run(fbank)` scores a batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError

ONNX_FORMAT = "psla-onnx/1"
METADATA_KEY = "psla"
INPUT_NAME = "fbank"
OUTPUT_NAMES = ("clip", "frames")
# the payload-like keys `OnnxNetwork.payload` holds (a checkpoint's record, less the weights and model_config)
PAYLOAD_KEYS = ("class_ids", "class_names", "fbank_options", "target_length", "norm", "thresholds", "provenance")
REEXPORT = "re-export it with psla export --format onnx"


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_threads() -> int:
    """onnxruntime's intra-op threads: torch's (what `torch.set_num_threads` and OMP_NUM_THREADS set for
    the torch model, so both back ends use the same cores), else every CPU."""
    return max(1, torch.get_num_threads() or os.cpu_count() or 1)


def session_options(threads: int | None = None):
    """onnxruntime's options (imported here: tagging a checkpoint need not load onnxruntime)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Threads that spin while they wait for work take cores from whatever else runs (the same reason
    # `psla` sets OMP_WAIT_POLICY=PASSIVE for torch).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    return options


class OnnxNetwork:
    """A model of `psla export --format onnx` on onnxruntime's CPU execution provider.

    `payload`: the metadata as a checkpoint's record (class_ids, class_names, fbank_options, target_length,
    norm, thresholds, provenance; no weights, no model_config); `metadata`: the whole `psla` document.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise PipelineError(f"cannot load {self.path}: no such file; export one with psla export --format onnx")
        self.threads = threads or default_threads()
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's InvalidProtobuf / Fail / InvalidGraph ...
            raise PipelineError(
                f"cannot load {self.path}: not an ONNX model, or a truncated or damaged one "
                f"({_one_line(err, 120)}); {REEXPORT}"
            ) from None
        self.metadata = self._read_metadata()
        self.payload = {key: self.metadata.get(key) for key in PAYLOAD_KEYS}
        self._check_graph()

    def _read_metadata(self) -> dict:
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise PipelineError(
                f"{self.path}: an ONNX model, but not one of psla export (no '{METADATA_KEY}' metadata with its "
                f"classes and fbank options); export the checkpoint with psla export --format onnx"
            )
        try:
            metadata = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise PipelineError(
                f"{self.path}: its '{METADATA_KEY}' metadata is not valid JSON ({err.msg}); {REEXPORT}"
            ) from None
        found = metadata.get("format") if isinstance(metadata, dict) else None
        if found != ONNX_FORMAT:
            what = "no format tag" if found is None else f"format {found!r}"
            raise PipelineError(
                f"{self.path}: '{METADATA_KEY}' metadata of {what}, expected {ONNX_FORMAT!r}; {REEXPORT}"
            )
        missing = [key for key in PAYLOAD_KEYS[:5] if key not in metadata]
        if missing:
            raise PipelineError(f"{self.path}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}; {REEXPORT}")
        if len(metadata["class_names"]) != len(metadata["class_ids"]):
            raise PipelineError(
                f"{self.path}: {len(metadata['class_names'])} class names for {len(metadata['class_ids'])} "
                f"class ids in its metadata; {REEXPORT}"
            )
        return metadata

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or any(name not in outputs for name in OUTPUT_NAMES):
            raise PipelineError(
                f"{self.path}: the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, not "
                f"'{INPUT_NAME}' -> {', '.join(OUTPUT_NAMES)}; {REEXPORT}"
            )
        classes = len(self.metadata["class_ids"])
        width = outputs["clip"].shape[-1] if outputs["clip"].shape else None
        if width != classes:
            raise PipelineError(
                f"{self.path}: the metadata lists {classes} classes but the graph's clip output has {width}; "
                f"the metadata belongs to another model: {REEXPORT}"
            )
        bins = inputs[INPUT_NAME].shape[-1]
        want = int(self.metadata["fbank_options"].get("num_mel_bins", bins))
        if isinstance(bins, int) and bins != want:
            raise PipelineError(
                f"{self.path}: the graph takes {bins} mel bins, its fbank options say {want}; {REEXPORT}"
            )
        self.mel_bins = bins if isinstance(bins, int) else want

    @property
    def class_ids(self) -> tuple[str, ...]:
        return tuple(self.payload["class_ids"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.payload["class_names"])

    def run(self, fbank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`fbank` `[batch, time, mel]` (float16 as the features stage stores it, or float32; not normalised)
        -> `(clip [batch, classes], frames [batch, frames, classes])`, float32."""
        x = np.ascontiguousarray(np.asarray(fbank), dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != self.mel_bins or x.shape[0] < 1 or x.shape[1] < 1:
            raise PipelineError(
                f"{self.path}: expected fbanks [batch, time, {self.mel_bins} mel bins], got shape {list(x.shape)}"
            )
        clip, frames = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return np.asarray(clip, dtype=np.float32), np.asarray(frames, dtype=np.float32)
