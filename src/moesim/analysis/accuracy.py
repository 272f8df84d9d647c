"""Published accuracy per model and weight dtype (``models_db/accuracy/<model>.yaml``).

Every score is a published figure with its source; nothing is estimated. A dtype with no
published score has none (the loader says so), and a model without a file is unknown (None).

File layout: ``model`` (a models_db name), ``released_dtype``, optional ``equivalent_dtypes``
(a dtype whose weights are a lossless re-encoding of another's, e.g. DeepSeek-R1's bf16 = its
fp8 upcast, with the reason), and ``results``: each a ``suite`` (scores measured together, same
harness and settings: compare dtypes only within one suite), a ``dtype``, the ``checkpoint``
evaluated, its ``quantization``, ``settings``, ``source`` and ``scores`` (benchmark ->
``{value, metric}``, percent as published). Results are listed primary-first.

    accuracy_of("deepseek-r1", "int4")["scores"]["gsm8k"]     # 95.68 (ISTA-DASLab GPTQ INT4)
    score_for("mixtral-8x7b", "fp8", "mmlu")                  # {"value": 70.0, "suite": ..., ...}
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..db import data_root, load_yaml, normalize, validate


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScoreSource(_Frozen):
    title: str
    url: str | None = None
    note: str | None = None


class Score(_Frozen):
    value: float = Field(ge=0, le=100, description="percent, as published")
    metric: str | None = None


class Equivalence(_Frozen):
    same_as: str
    reason: str


class AccuracyResult(_Frozen):
    suite: str
    dtype: str
    checkpoint: str
    quantization: str
    settings: str | None = None
    source: ScoreSource
    scores: dict[str, Score]


class AccuracyFile(_Frozen):
    model: str
    released_dtype: str
    equivalent_dtypes: dict[str, Equivalence] = Field(default_factory=dict)
    results: tuple[AccuracyResult, ...]


@lru_cache(maxsize=1)
def _table() -> dict[str, AccuracyFile]:
    """All accuracy files, keyed by the normalized model name."""
    directory = data_root("models_db") / "accuracy"
    out: dict[str, AccuracyFile] = {}
    if directory.is_dir():
        for path in sorted(directory.glob("*.yaml")):
            spec = validate(AccuracyFile, load_yaml(path), str(path))
            out[normalize(spec.model)] = spec
    return out


def _canonical(model_name: str) -> str:
    """The models_db name for a name or alias (unchanged when the database lacks it)."""
    from ..db import models

    spec = models().find(model_name)
    return spec.name if spec is not None else model_name


def accuracy_file(model_name: str) -> AccuracyFile | None:
    """The accuracy file of a model (name or alias), or None when there is none."""
    return _table().get(normalize(_canonical(model_name)))


def published_dtypes(model_name: str) -> list[str]:
    spec = accuracy_file(model_name)
    if spec is None:
        return []
    return list(dict.fromkeys(r.dtype for r in spec.results))


def _resolve_dtype(spec: AccuracyFile, dtype: str) -> tuple[str, str | None]:
    """The dtype whose published results apply, and a note when it is an equivalent one."""
    eq = spec.equivalent_dtypes.get(dtype)
    if eq is not None:
        return eq.same_as, f"{dtype} scores are those of {eq.same_as}: {eq.reason}"
    return dtype, None


def accuracy_of(model_name: str, dtype: str | None = None) -> dict[str, Any] | None:
    """Published scores of ``model_name`` with weights in ``dtype`` (default: the released dtype).

    Returns None when the model has no accuracy file. Otherwise a dict:
    ``model``, ``dtype``, ``scores_dtype`` (the dtype whose results apply), ``scores``
    (benchmark -> percent; the first listed result of that dtype wins per benchmark),
    ``results`` (every published result of that dtype: suite, checkpoint, quantization,
    settings, source, scores) and ``note`` (why ``scores`` is empty, or an equivalence used).
    A dtype with no published score gives empty ``scores`` and a note naming the dtypes that
    have one: it is unknown, never estimated.
    """
    spec = accuracy_file(model_name)
    if spec is None:
        return None
    dtype = dtype or spec.released_dtype
    scores_dtype, note = _resolve_dtype(spec, dtype)
    results = [r for r in spec.results if r.dtype == scores_dtype]
    scores: dict[str, float] = {}
    for r in results:
        for bench, s in r.scores.items():
            scores.setdefault(bench, s.value)
    if not results:
        have = published_dtypes(model_name) + list(spec.equivalent_dtypes)
        note = (f"no published score for {spec.model} with {dtype} weights "
                f"(published: {', '.join(have)}); accuracy unknown")
    return {
        "model": spec.model,
        "dtype": dtype,
        "scores_dtype": scores_dtype if results else None,
        "released_dtype": spec.released_dtype,
        "scores": scores,
        "results": [r.model_dump() for r in results],
        "note": note,
    }


def score_for(model_name: str, dtype: str, benchmark: str, suite: str | None = None) -> dict[str, Any] | None:
    """One published score: ``{value, metric, suite, checkpoint, source}`` or None if unpublished."""
    spec = accuracy_file(model_name)
    if spec is None:
        return None
    scores_dtype, _ = _resolve_dtype(spec, dtype)
    for r in spec.results:
        if r.dtype == scores_dtype and (suite is None or r.suite == suite) and benchmark in r.scores:
            s = r.scores[benchmark]
            return {"value": s.value, "metric": s.metric, "suite": r.suite, "checkpoint": r.checkpoint,
                    "source": r.source.model_dump()}
    return None


def common_suite(model_name: str, dtypes: list[str] | tuple[str, ...], benchmark: str) -> str | None:
    """A suite reporting ``benchmark`` for every dtype in ``dtypes`` (comparable scores), or None."""
    spec = accuracy_file(model_name)
    if spec is None:
        return None
    suites = list(dict.fromkeys(r.suite for r in spec.results))
    for suite in suites:
        if all(score_for(model_name, d, benchmark, suite) is not None for d in dtypes):
            return suite
    return None
