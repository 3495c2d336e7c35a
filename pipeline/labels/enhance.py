"""PSLA label enhancement: add labels the annotators missed, using the ontology and a teacher.

A teacher trained on the original labels scores every training clip. For each class the
threshold is a statistic of the teacher's scores over the clips labelled with that class
(`mean`, `median`, or the `25`th / `10`th / `5`th percentile, numpy's default linear
interpolation); a class with no labelled clip has no threshold and is never added.

- type 1: where a clip has label P, add each direct child C of P (P a non-abstract ontology
  class) that the teacher scores above C's threshold;
- type 2: where a clip has label D, add each ancestor A of D (reached through non-abstract
  parents, transitively, also through classes outside the vocabulary) scored above A's threshold;
- both: the union of the two, each computed from the original labels.

"Abstract" is the official code's test: an ontology node whose restrictions are exactly
`["abstract"]`. "Musical concepts" (`["abstract", "blacklist"]`) is therefore a parent, and a Song
clip can gain Music through it. For FSD50K the official code also never enhances *from* five
classes (`fix_type1.py` / `fix_type2.py` hard-code /m/09l8g, /m/0bm0k, /t/dd00012, /m/09hlz4,
/t/dd00071): they are exactly the FSD50K classes whose ontology node carries a restriction
(abstract or blacklist). `restricted_sources=False` (the FSD50K recipe) applies that rule: such a
class adds no children (type 1) and no ancestors (type 2) where it is a label; it can still be
added itself and still links its own parents and children in the ontology.

Only classes of the class list are ever added; "above" is strictly greater. The work is
vectorised over clips and classes and done in bounded row chunks: the label pairs of a chunk
are expanded through a sparse (CSR) form of the relation (labels @ relation, without the dense
product over all C x C), and the candidates are kept where `score > threshold` and the clip
does not already carry the class. Memory beyond the inputs and the output is O(chunk x C).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import PipelineError

STATS = ("mean", "median", "25", "10", "5")
TYPES = ("type1", "type2")
CHUNK_ROWS = 16384  # rows per chunk: 16384 x 527 float32 scores = 35 MB
TOP_PAIRS = 20


# ---------------------------------------------------------------------------------------------
# Ontology relations


@dataclass(frozen=True)
class Relation:
    """A class -> classes relation over the vocabulary in CSR form: row k's targets are
    `indices[indptr[k]:indptr[k + 1]]` (sorted, unique)."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_lists(cls, targets: Sequence[Iterable[int]]) -> Relation:
        rows = [np.unique(np.fromiter(t, dtype=np.int64)) for t in targets]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(indptr, indices.astype(np.int64))

    @property
    def size(self) -> int:
        return len(self.indptr) - 1

    def dense(self) -> np.ndarray:
        """`[C, C]` bool matrix, `m[k, j]` = j is a target of k."""
        m = np.zeros((self.size, self.size), dtype=bool)
        m[np.repeat(np.arange(self.size), np.diff(self.indptr)), self.indices] = True
        return m

    def targets(self, k: int) -> np.ndarray:
        return self.indices[self.indptr[k] : self.indptr[k + 1]]

    def expand(self, rows: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For label pairs (row, source): every (row, source, target) with target in source's row."""
        counts = self.indptr[sources + 1] - self.indptr[sources]
        total = int(counts.sum())
        if total == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        ends = np.cumsum(counts)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
        targets = self.indices[np.repeat(self.indptr[sources], counts) + offsets]
        return np.repeat(rows, counts), np.repeat(sources, counts), targets


@dataclass(frozen=True)
class Relations:
    """The vocabulary's ontology relations: `children` (type 1: parent -> direct children) and
    `ancestors` (type 2: class -> ancestors), both restricted to the vocabulary."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    children: Relation
    ancestors: Relation


def is_abstract(entry: dict) -> bool:
    """The official test: restrictions exactly ["abstract"] (not ["abstract", "blacklist"])."""
    return list(entry.get("restrictions") or ()) == ["abstract"]


def restricted_classes(ontology: list[dict], mids) -> list[str]:
    """Classes of `mids` whose ontology node carries any restriction (abstract, blacklist)."""
    restricted = {e["id"] for e in ontology if e.get("restrictions")}
    return [m for m in mids if m in restricted]


def build_relations(
    ontology: list[dict], classes, source: str = "the ontology", restricted_sources: bool = True
) -> Relations:
    """Relations of a class list (`ClassList` or sequence of MIDs) in an ontology (ontology.json entries).

    Only non-abstract ontology classes (`is_abstract`) act as parents; ancestors are followed through
    non-abstract parents transitively (through classes outside the vocabulary too); only vocabulary
    classes are targets. `restricted_sources=False` (FSD50K, see the module docstring): a class with a
    restricted ontology node adds nothing where it is a label. A vocabulary class missing from the
    ontology is a one-line `PipelineError` naming it.
    """
    mids = tuple(classes.mids) if hasattr(classes, "mids") else tuple(str(c) for c in classes)
    names = tuple(classes.names) if hasattr(classes, "names") else mids
    known = {e["id"] for e in ontology}
    missing = [i for i, mid in enumerate(mids) if mid not in known]
    if missing:
        first = missing[0]
        raise PipelineError(
            f"{source}: class '{mids[first]}' ({names[first]}) of the class list is not in the "
            f"ontology ({len(missing)} of {len(mids)} classes missing); the ontology must "
            f"describe every class of the class list"
        )
    index = {mid: i for i, mid in enumerate(mids)}
    parents_of: dict[str, list[str]] = {}
    children: list[list[int]] = [[] for _ in mids]
    for entry in ontology:
        if is_abstract(entry):
            continue
        parent = entry["id"]
        for child in entry["child_ids"]:
            parents_of.setdefault(child, []).append(parent)
            if parent in index and child in index:
                children[index[parent]].append(index[child])
    ancestors: list[list[int]] = []
    for mid in mids:
        seen: set[str] = set()
        stack = list(parents_of.get(mid, ()))
        while stack:  # iterative DFS; `seen` makes it safe on a cyclic ontology
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(parents_of.get(node, ()))
        ancestors.append([index[a] for a in seen if a in index and a != mid])
    if not restricted_sources:
        for mid in restricted_classes(ontology, mids):
            children[index[mid]], ancestors[index[mid]] = [], []
    return Relations(mids, names, Relation.from_lists(children), Relation.from_lists(ancestors))


# ---------------------------------------------------------------------------------------------
# Thresholds


def check_stat(stat: str) -> str:
    stat = str(stat)
    if stat not in STATS + ("none",):
        raise PipelineError(f"labels.enhance: unknown statistic '{stat}'; use one of none, {', '.join(STATS)}")
    return stat


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(str(t) for t in types))
    if not types:
        raise PipelineError("labels.types is empty: name type1 and/or type2 (or set labels.enhance: none)")
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise PipelineError(f"labels.types: unknown type '{unknown[0]}'; use type1 and/or type2")
    return tuple(t for t in TYPES if t in types)


def _check_shapes(labels, scores) -> tuple[int, int]:
    if len(labels.shape) != 2:
        raise PipelineError(f"labels must be a [clips, classes] matrix, got shape {tuple(labels.shape)}")
    if tuple(scores.shape) != tuple(labels.shape):
        raise PipelineError(
            f"teacher scores of shape {tuple(scores.shape)} do not match the labels "
            f"({labels.shape[0]} clips x {labels.shape[1]} classes)"
        )
    return labels.shape[0], labels.shape[1]


def _finite_block(block: np.ndarray, start: int) -> np.ndarray:
    if block.dtype.kind != "f":
        raise PipelineError(f"teacher scores must be floating point, found {block.dtype}")
    if not np.isfinite(block).all():
        row = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        raise PipelineError(f"teacher scores: clip {start + row + 1} holds a non-finite score; scores must be finite")
    return block


def class_thresholds(labels, scores, stat: str, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Per-class threshold `[C]` float64: `stat` of the scores of the clips labelled with the class.

    Computed in float64 on the scores in clip order, so it equals `np.mean` / `np.median` /
    `np.percentile(q)` of `scores[labels[:, k] != 0, k]`; NaN for a class with no labelled clip.
    """
    stat = check_stat(stat)
    if stat == "none":
        raise PipelineError("labels.enhance is none: there are no thresholds")
    n, c = _check_shapes(labels, scores)
    cols, vals = [], []
    for start in range(0, n, chunk_rows):
        lab = np.asarray(labels[start : start + chunk_rows]) != 0
        block = _finite_block(np.asarray(scores[start : start + chunk_rows]), start)
        flat = np.flatnonzero(lab)  # row-major: within a class, clips stay in order
        cols.append(flat % c)
        vals.append(block.reshape(-1)[flat].astype(np.float64))
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    vals = np.concatenate(vals) if vals else np.zeros(0, np.float64)
    order = np.argsort(cols, kind="stable")
    vals = vals[order]
    bounds = np.zeros(c + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(np.bincount(cols, minlength=c))
    if stat == "mean":
        fn = np.mean
    elif stat == "median":
        fn = np.median
    else:
        q = float(stat)
        fn = lambda v: np.percentile(v, q)  # noqa: E731
    out = np.full(c, np.nan)
    for k in np.flatnonzero(np.diff(bounds)):
        out[k] = fn(vals[bounds[k] : bounds[k + 1]])
    return out


# ---------------------------------------------------------------------------------------------
# Enhancement


@dataclass
class Enhancement:
    """The enhanced `[N, C]` bool labels, the per-class thresholds and the statistics."""

    labels: np.ndarray
    thresholds: np.ndarray | None
    stat: str
    types: tuple[str, ...]
    labels_before: int
    labels_after: int
    clips_changed: int
    added_by_type: dict[str, int]
    before_per_class: np.ndarray
    added_per_class: np.ndarray
    pair_counts: dict[str, np.ndarray] = field(default_factory=dict)  # type -> [C, C] int64, [parent, child]

    @property
    def added(self) -> int:
        return self.labels_after - self.labels_before

    def metrics(self) -> dict[str, float]:
        out = {
            "clips": int(self.labels.shape[0]),
            "classes": int(self.labels.shape[1]),
            "labels_before": self.labels_before,
            "labels_after": self.labels_after,
            "added": self.added,
            "clips_changed": self.clips_changed,
            "classes_with_additions": int((self.added_per_class > 0).sum()),
            "classes_without_labels": int((self.before_per_class == 0).sum()),
        }
        out.update({f"added_{t}": n for t, n in self.added_by_type.items()})
        return out

    def top_pairs(self, mids: Sequence[str], names: Sequence[str], limit: int = TOP_PAIRS) -> list[dict]:
        """The most frequent (parent, child) pairs behind the additions: type1 adds the child of a
        labelled parent, type2 the parent (ancestor) of a labelled child. Count = clips."""
        rows = []
        for kind, counts in self.pair_counts.items():
            parent, child = np.nonzero(counts)
            rows += [(int(counts[p, ch]), kind, int(p), int(ch)) for p, ch in zip(parent, child)]
        rows.sort(key=lambda r: (-r[0], r[1], r[2], r[3]))
        return [
            {
                "type": kind,
                "count": count,
                "added": "child" if kind == "type1" else "parent",
                "parent": mids[p],
                "parent_name": names[p],
                "child": mids[ch],
                "child_name": names[ch],
            }
            for count, kind, p, ch in rows[:limit]
        ]

    def report(self, mids: Sequence[str], names: Sequence[str], top: int = TOP_PAIRS) -> dict:
        per_class = [
            {
                "mid": mids[k],
                "name": names[k],
                "added": int(self.added_per_class[k]),
                "labelled_before": int(self.before_per_class[k]),
                "threshold": None
                if self.thresholds is None or np.isnan(self.thresholds[k])
                else float(self.thresholds[k]),
            }
            for k in np.argsort(-self.added_per_class, kind="stable")
            if self.added_per_class[k] > 0
        ]
        return {
            "enhance": self.stat,
            "types": list(self.types),
            **self.metrics(),
            "added_by_type": dict(self.added_by_type),
            "added_per_class": per_class,
            "top_pairs": self.top_pairs(mids, names, top),
        }


def enhance_labels(
    labels,
    scores,
    relations: Relations | None,
    stat: str,
    types: Sequence[str] = TYPES,
    chunk_rows: int = CHUNK_ROWS,
    thresholds: np.ndarray | None = None,
) -> Enhancement:
    """Enhance `labels` `[N, C]` (multi-hot, nonzero = labelled) with teacher `scores` `[N, C]`.

    `stat` is none | mean | median | 25 | 10 | 5; `types` type1 and/or type2. `none` passes the
    labels through (scores and relations may then be None). Inputs may be numpy arrays, memmaps
    or h5py datasets: they are read `chunk_rows` rows at a time.
    """
    stat = check_stat(stat)
    if len(labels.shape) != 2:
        raise PipelineError(f"labels must be a [clips, classes] matrix, got shape {tuple(labels.shape)}")
    n, c = labels.shape
    out = np.empty((n, c), dtype=bool)
    before = np.zeros(c, dtype=np.int64)
    if stat == "none":
        for start in range(0, n, chunk_rows):
            out[start : start + chunk_rows] = np.asarray(labels[start : start + chunk_rows]) != 0
            before += out[start : start + chunk_rows].sum(axis=0, dtype=np.int64)
        total = int(before.sum())
        return Enhancement(out, None, stat, (), total, total, 0, {}, before, np.zeros(c, np.int64))
    types = check_types(types)
    _check_shapes(labels, scores)
    if relations is None or relations.children.size != c:
        raise PipelineError(f"the ontology relations must cover the {c} classes of the labels")
    if thresholds is None:
        thresholds = class_thresholds(labels, scores, stat, chunk_rows)
    relation = {"type1": relations.children, "type2": relations.ancestors}
    added_by_type = dict.fromkeys(types, 0)
    pair_counts = {t: np.zeros(c * c, dtype=np.int64) for t in types}
    added_per_class = np.zeros(c, dtype=np.int64)
    changed = 0
    for start in range(0, n, chunk_rows):
        # Flat indices, never 2-D nonzero or axis reductions: those are 5-10x slower on [chunk, C].
        lab = np.asarray(labels[start : start + chunk_rows]) != 0
        block = _finite_block(np.asarray(scores[start : start + chunk_rows]), start)
        flat = np.flatnonzero(lab)
        rows, sources = np.divmod(flat, c)
        before += np.bincount(sources, minlength=c)
        lab_flat, block_flat = lab.reshape(-1), block.reshape(-1)
        union = []
        for kind in types:
            r, s, t = relation[kind].expand(rows, sources)
            cell = r * c + t
            keep = ~lab_flat[cell] & (block_flat[cell] > thresholds[t])  # NaN threshold (no labelled clip): never
            cell, s, t = cell[keep], s[keep], t[keep]
            added = np.unique(cell)  # one class may be reached from several labels of a clip
            added_by_type[kind] += len(added)
            union.append(added)
            parent, child = (s, t) if kind == "type1" else (t, s)
            pair_counts[kind] += np.bincount(parent * c + child, minlength=c * c)
        union = np.unique(np.concatenate(union))
        added_per_class += np.bincount(union % c, minlength=c)
        changed += len(np.unique(union // c))
        chunk_out = out[start : start + chunk_rows]
        chunk_out[...] = lab
        chunk_out.reshape(-1)[union] = True
    total = int(before.sum())
    return Enhancement(
        out,
        thresholds,
        stat,
        types,
        total,
        total + int(added_per_class.sum()),
        changed,
        added_by_type,
        before,
        added_per_class,
        {t: v.reshape(c, c) for t, v in pair_counts.items()},
    )


def labels_of(matrix: np.ndarray, mids: Sequence[str], chunk_rows: int = CHUNK_ROWS) -> list[tuple[str, ...]]:
    """Per row of a multi-hot `[N, C]` matrix, its class ids in class order."""
    mids = np.asarray(mids, dtype=object)
    out: list[tuple[str, ...]] = []
    for start in range(0, matrix.shape[0], chunk_rows):
        block = np.asarray(matrix[start : start + chunk_rows]) != 0
        rows, cols = np.nonzero(block)
        splits = np.searchsorted(rows, np.arange(1, block.shape[0]))
        out.extend(tuple(part) for part in np.split(mids[cols], splits))
    return out
