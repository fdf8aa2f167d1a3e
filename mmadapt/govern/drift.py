"""How far new inputs have moved from a recipe's training data; whether to retrain.

Train inputs and new inputs are embedded with the shared retrieval embedder (unit
vectors). Three signals, each compared with a threshold calibrated on the training
data itself — ``splits`` random splits of train into a reference part and a held-out
part as large as the new data (at most half of train), i.e. what the signal looks like
when nothing has drifted:

* ``mmd2``: squared maximum mean discrepancy (unbiased) with an RBF kernel whose
  bandwidth is the median distance between train embeddings;
* ``far_share``: the share of inputs whose nearest train neighbour is less similar than
  the ``1 - level`` quantile of held-out train inputs' nearest-neighbour similarity;
* ``oov_rate``: the share of words in the new inputs never seen in train inputs (nor among
  the modality's :meth:`~mmadapt.protocols.Modality.drift_terms`, e.g. a speech vocabulary).

A signal drifts when it exceeds the ``level`` quantile of its calibration values (or, for
``mmd2``, an explicit ``threshold``); any drifting signal flags retraining. The mean-
embedding cosine distance is reported beside them. The text that stands for an example is
the modality's :meth:`~mmadapt.protocols.Modality.drift_texts` (a question, a clip's
transcript, an image prompt); the embedder is ``--embedder``, else the modality's
:meth:`~mmadapt.protocols.Modality.drift_embedder` for the recipe, else MiniLM.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmadapt.engine.versions import recipe_dir
from mmadapt.errors import DataError, MmadaptError
from mmadapt.govern.livelog import read_requests, requests_path, write_drift
from mmadapt.protocols import Example, Modality, ServeRequest, get_modality

DEFAULT_EMBEDDER = "embedded:minilm-l6"
MAX_ITEMS = 2000  # inputs per side; larger sets are subsampled (seeded)
MIN_TRAIN = 8
WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class Signal:
    name: str
    value: float
    threshold: float
    source: str  # calibrated | --threshold
    drifted: bool


@dataclass
class DriftResult:
    recipe: str
    embedder: str
    n_train: int
    n_new: int
    signals: list[Signal]
    mean_cosine_distance: float
    nn_similarity_cut: float
    new_words: list[tuple[str, int]] = field(default_factory=list)  # most frequent unseen words
    far_examples: list[tuple[str, float]] = field(default_factory=list)  # (input, nearest train similarity)

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.signals)

    def signal(self, name: str) -> Signal:
        return next(s for s in self.signals if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


# ---------------------------------------------------------------- statistics


def rbf_bandwidth(x: np.ndarray) -> float:
    """Median pairwise Euclidean distance of ``x`` (unit vectors), floored to avoid zero."""
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    upper = sq[np.triu_indices(len(x), k=1)]
    return float(max(np.sqrt(np.median(upper)) if upper.size else 1.0, 1e-3))


def _kernel(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    sq = np.clip(2.0 - 2.0 * (x @ y.T), 0.0, None)
    return np.exp(-sq / (2.0 * sigma * sigma))


def mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased squared MMD between samples ``x`` and ``y`` of unit vectors (RBF kernel)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least two items on each side")
    return _mmd2_from(_kernel(x, x, sigma), _kernel(y, y, sigma), _kernel(x, y, sigma))


def _mmd2_from(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mean_cosine_distance(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(axis=0), y.mean(axis=0)
    denom = float(np.linalg.norm(mx) * np.linalg.norm(my))
    return float(1.0 - (mx @ my) / denom) if denom > 0 else 1.0


def nearest_similarity(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (queries @ reference.T).max(axis=1)


def words(texts: Sequence[str]) -> list[str]:
    return [w for t in texts for w in WORD.findall(t.lower())]


def oov_rate(new_words: Sequence[str], known: set[str]) -> float:
    return float(sum(1 for w in new_words if w not in known) / len(new_words)) if new_words else 0.0


# ---------------------------------------------------------------- inputs


def read_new_inputs(recipe, path: str | Path, modality: Modality | None = None) -> list[str]:
    """NEW_DATA as texts: a ``.txt`` file holds one input a line; anything else (a JSONL file, an
    audio folder ...) is read by the modality as its eval split would be, and each example stands
    for itself through :meth:`~mmadapt.protocols.Modality.drift_texts`."""
    path = Path(path)
    if not path.exists():
        raise DataError("new inputs not found", path=path, fix="pass data shaped like the eval split, or a .txt file of one input a line")
    modality = modality or get_modality(recipe.modality)
    if path.is_dir() or path.suffix.lower() != ".txt":
        data_section = recipe.data.model_copy(update={"eval": str(path.resolve())})
        as_eval = recipe.model_copy(update={"data": data_section})
        return modality.drift_texts(modality.load_data(as_eval).eval)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path, fix="save it as UTF-8, one input a line") from None
    texts = [line for line in lines if line]
    if not texts:
        raise DataError("no inputs", path=path, fix="one input a line")
    return texts


# ---------------------------------------------------------------- the check


def _subsample(items: list[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(items) <= limit:
        return items
    return [items[i] for i in sorted(rng.choice(len(items), size=limit, replace=False))]


def detect(
    train_texts: Sequence[str],
    new_texts: Sequence[str],
    embedder,
    *,
    vocabulary: Sequence[str] = (),
    threshold: float | None = None,
    level: float = 0.95,
    splits: int = 40,
    seed: int = 0,
    recipe_name: str = "",
) -> DriftResult:
    """Drift of ``new_texts`` from ``train_texts`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    train = _subsample(list(train_texts), MAX_ITEMS, rng)
    new = _subsample(list(new_texts), MAX_ITEMS, rng)
    if len(train) < MIN_TRAIN:
        raise DataError(
            f"{len(train)} train inputs; drift needs at least {MIN_TRAIN} to calibrate", fix="add train examples"
        )
    if len(new) < 2:
        raise DataError("drift needs at least 2 new inputs", fix="pass more new inputs")
    x = np.asarray(embedder.encode(train), dtype=np.float64)
    y = np.asarray(embedder.encode(new), dtype=np.float64)
    sigma = rbf_bandwidth(x)
    vocab_words = set(words(vocabulary))
    train_words = [set(WORD.findall(t.lower())) for t in train]

    # calibration: held-out parts of train against the rest
    m = max(2, min(len(new), len(train) // 2))
    null_mmd, null_far, null_oov, held_sims = [], [], [], []
    split_sims = []
    gram = x @ x.T  # computed once: every split reads blocks of it
    k_train = np.exp(-np.clip(2.0 - 2.0 * gram, 0.0, None) / (2.0 * sigma * sigma))
    for _ in range(splits):
        perm = rng.permutation(len(train))
        held, ref = perm[:m], perm[m:]
        null_mmd.append(_mmd2_from(k_train[np.ix_(ref, ref)], k_train[np.ix_(held, held)], k_train[np.ix_(ref, held)]))
        sims = gram[np.ix_(held, ref)].max(axis=1)
        split_sims.append(sims)
        held_sims.extend(sims.tolist())
        known = set().union(*(train_words[i] for i in ref)) | vocab_words
        null_oov.append(oov_rate(words([train[i] for i in held]), known))
    cut = float(np.quantile(held_sims, 1.0 - level))
    null_far = [float((s < cut).mean()) for s in split_sims]

    sims_new = nearest_similarity(y, x)
    known_all = set().union(*train_words) | vocab_words
    new_word_list = words(new)
    unseen = Counter(w for w in new_word_list if w not in known_all)
    values = {
        "mmd2": mmd2(x, y, sigma),
        "far_share": float((sims_new < cut).mean()),
        "oov_rate": oov_rate(new_word_list, known_all),
    }
    calibrated = {
        "mmd2": float(np.quantile(null_mmd, level)),
        "far_share": float(np.quantile(null_far, level)),
        "oov_rate": float(np.quantile(null_oov, level)),
    }
    signals = []
    for name, value in values.items():
        limit, source = calibrated[name], "calibrated"
        if name == "mmd2" and threshold is not None:
            limit, source = float(threshold), "--threshold"
        signals.append(Signal(name, round(value, 6), round(limit, 6), source, bool(value > limit)))
    far_order = np.argsort(sims_new)[:5]
    return DriftResult(
        recipe=recipe_name,
        embedder=getattr(embedder, "ref", type(embedder).__name__),
        n_train=len(train),
        n_new=len(new),
        signals=signals,
        mean_cosine_distance=round(mean_cosine_distance(x, y), 6),
        nn_similarity_cut=round(cut, 4),
        new_words=unseen.most_common(10),
        far_examples=[(new[i], round(float(sims_new[i]), 4)) for i in far_order if sims_new[i] < cut],
    )


def drift(
    recipe,
    new_data: str | Path | None = None,
    *,
    threshold: float | None = None,
    embedder: str | None = None,
    level: float = 0.95,
    splits: int = 40,
    from_log: bool = False,
) -> DriftResult:
    """Drift of the inputs in ``new_data`` (or, ``from_log``, of the served requests) from ``recipe``'s train split."""
    from mmadapt.retrieval import load_embedder

    if not 0.5 < level < 1.0:
        raise MmadaptError(f"level {level} must be between 0.5 and 1", fix="e.g. --level 0.95")
    if (new_data is None) == (not from_log):
        raise MmadaptError("drift compares new inputs: name a file or the serve log, not both", fix="pass --inputs PATH or --from-log")
    modality = get_modality(recipe.modality)
    data = modality.load_data(recipe)
    if not data.train:
        raise DataError(
            "the recipe has no train split to compare with", path=recipe.source, fix="set data.train"
        )
    train_texts = modality.drift_texts(data.train)
    new_texts = log_inputs(recipe, modality) if from_log else read_new_inputs(recipe, new_data, modality)
    model = load_embedder(embedder or modality.drift_embedder(recipe) or DEFAULT_EMBEDDER)
    result = detect(
        train_texts, new_texts, model, vocabulary=modality.drift_terms(data), threshold=threshold, level=level,
        splits=splits, seed=recipe.train.seed, recipe_name=recipe.name,
    )
    if from_log:  # the dashboard of `mmadapt serve` shows the last check
        write_drift(recipe_dir(recipe.output_dir, recipe.name), result.to_dict())
    return result


def log_inputs(recipe, modality: Modality | None = None) -> list[str]:
    """The served requests' inputs (``serve/requests.jsonl``, answered ones) as drift texts.

    Each logged request becomes the example its predictor saw: the input is what
    :meth:`~mmadapt.protocols.Modality.serve_inputs` makes of its logged fields (an upload, gone
    by now, stands as its file name) and the reference is the answer it got, so
    :meth:`~mmadapt.protocols.Modality.drift_texts` picks the question, the prompt, or, for a
    clip, the transcript the model heard.
    """
    modality = modality or get_modality(recipe.modality)
    rdir = recipe_dir(recipe.output_dir, recipe.name)
    examples, redacted = [], 0
    for entry in read_requests(rdir):
        fields, output = entry.get("input"), entry.get("output")
        if entry.get("status") != 200:
            continue
        if not isinstance(fields, dict):
            redacted += 1
            continue
        upload = fields.get("file")
        request = ServeRequest(dict(fields), Path(upload.get("name") or "upload") if isinstance(upload, dict) else None)
        try:
            inputs = modality.serve_inputs(request)
        except MmadaptError:
            continue  # answered, so it was readable then: a request the modality reads differently now is skipped
        reference = output[0] if isinstance(output, list) and output else None
        examples.append(Example(str(entry.get("id")), inputs[0] if inputs else None, reference))
    texts = [t for t in modality.drift_texts(examples) if t.strip()]
    if not texts:
        why = f"{redacted} answered requests were logged with --redact-inputs" if redacted else "no answered request is logged"
        raise DataError(f"no served inputs to compare: {why}", path=requests_path(rdir),
                        fix="serve the recipe (without --redact-inputs) and let traffic come in, or pass --inputs PATH")
    return texts
