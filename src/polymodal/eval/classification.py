"""Classification evaluation of a fusion run: accuracy and macro-F1 clean, with each modality removed,
and (``robustness=True``) MultiBench-style noise sweeps per modality and for all modalities together.

    from polymodal.eval.classification import evaluate_classification
    report = evaluate_classification("runs/fusion_attention", "data/digits", robustness=True,
                                     late_fusion_report=late_report)

Noise is applied to the raw `Sample` (`polymodal.eval.noise.noisy_sample`: pixels, waveform, characters)
with seed ``(seed, sample index)``, then the run's evaluation transform. Clean tensors are computed once;
a noisy condition re-transforms only the modalities it makes noisy (the result is identical to
transforming the whole noisy sample, which the tests check). Removal masks the modality for every row
(`polymodal.eval.robustness.mask_out`), the same mechanism a sample without it gets.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.collate import collate
from ..data.formats.dataset import Dataset, open_dataset
from ..data.sample import Batch, Sample
from ..data.transforms.compose import SampleTransform
from ..data.transforms.resolve import transform_config
from ..errors import InvalidInput
from ..models.classifier import label_ids
from ..models.loading import load_model
from .noise import noisy_sample
from .robustness import DEFAULT_LEVELS, Condition, accuracy, macro_f1, mask_out, robustness_report

Tensors = dict[str, torch.Tensor]
Source = str | os.PathLike[str] | Dataset | Iterable[Sample]


def load_samples(source: Source, split: str | None = "test") -> list[Sample]:
    """Samples from a list, a `Dataset`, or a data path (``split`` of a generated data set dir; the
    whole source when it has no splits)."""
    if isinstance(source, str | os.PathLike):
        ds = open_dataset(source)
        if ds.splits and split is not None:
            ds = open_dataset(source, split=split)
        source = ds
    samples = list(source)
    if not samples:
        raise InvalidInput("no samples to evaluate", field="samples")
    return samples


def resolve_model(model_or_run: Any, transform: SampleTransform | None = None
                  ) -> tuple[nn.Module, SampleTransform]:
    """(fusion model in eval mode, evaluation transform) from a run dir or a built model. A bare model
    without ``transform`` gets the transform its encoders ask for on library defaults (what the trainer
    builds for a recipe without a ``data.transform`` section)."""
    if isinstance(model_or_run, str | os.PathLike):
        model, tf, cfg = load_model(model_or_run)
        if cfg.get("arch") != "fusion":
            raise InvalidInput(f"classification needs a 'fusion' run, got {cfg.get('arch')!r}", field="arch",
                               source=str(model_or_run))
        return model, (transform or tf).eval()
    if not callable(getattr(model_or_run, "predict", None)):
        raise InvalidInput(f"expected a run dir or a fusion model, got {type(model_or_run).__name__}",
                           field="model")
    if transform is None:
        transform = SampleTransform.from_dict(transform_config(model_or_run.preprocess(), {}))
    return model_or_run.eval(), transform.eval()


class _Evaluator:
    """Predictions of one model on one sample list under any `Condition`, with clean tensors cached."""

    def __init__(self, model: Any, transform: SampleTransform, samples: list[Sample], seed: int,
                 batch_size: int):
        self.model, self.transform, self.samples = model, transform, samples
        self.seed, self.batch_size = seed, batch_size
        self.modalities: tuple[str, ...] = tuple(model.modalities)
        self.y_true = np.asarray(model_labels(model, samples), dtype=np.int64)
        self.clean = [{m: v for m, v in transform(s).items() if m in self.modalities} for s in samples]
        for m in self.modalities:
            if not any(m in t for t in self.clean):
                raise InvalidInput(f"no sample has {m!r}, which the model uses", field="samples")

    def _tensors(self, i: int, noise: Mapping[str, float]) -> Tensors:
        active = {m: v for m, v in noise.items() if v > 0 and m in self.modalities}
        if not active:
            return self.clean[i]
        noisy = noisy_sample(self.samples[i], active, seed=(self.seed, i))
        # transform only the noisy modalities; the rest keep their cached clean tensors
        off: dict[str, Any] = {m: None for m in ("audio", "image", "text", "video") if m not in active}
        part = dataclasses.replace(self.transform, **off)(noisy)
        return {**self.clean[i], **{m: v for m, v in part.items() if m in self.modalities}}

    def batches(self, cond: Condition) -> Iterable[Batch]:
        for lo in range(0, len(self.samples), self.batch_size):
            idx = range(lo, min(lo + self.batch_size, len(self.samples)))
            batch = _collate_prepared([self.samples[i] for i in idx], [self._tensors(i, cond.noise) for i in idx])
            yield mask_out(batch, [m for m in cond.removed if m in batch.mask])

    def predict(self, cond: Condition) -> np.ndarray:
        device = _device(self.model)
        preds = [self.model.predict(b.to(device)).argmax(dim=1).cpu().numpy() for b in self.batches(cond)]
        return np.concatenate(preds)

    def __call__(self, cond: Condition) -> tuple[np.ndarray, np.ndarray]:
        return self.y_true, self.predict(cond)


def _collate_prepared(samples: list[Sample], tensors: list[Tensors]) -> Batch:
    """`collate` with per-sample tensors already computed (collate calls its transform once per sample,
    in order)."""
    it = iter(tensors)
    return collate(samples, lambda _s: next(it))


def model_labels(model: Any, samples: Sequence[Sample]) -> list[int]:
    """The integer label of every sample, read the way the model reads them in training."""
    return label_ids([s.metadata for s in samples], model.label_field, model.num_classes, model.classes,
                     [s.id for s in samples])


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"acc": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred)}


def evaluate_classification(model_or_run: Any, samples_or_dataset: Source, *, robustness: bool = False,
                            levels: Sequence[float] = DEFAULT_LEVELS,
                            late_fusion_report: Mapping[str, Any] | str | os.PathLike[str] | None = None,
                            seed: int = 0, transform: SampleTransform | None = None, split: str | None = "test",
                            batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """Evaluate a fusion classifier (a run dir or a `FusionModel`) on samples (a list, a `Dataset` or a
    data path; ``split`` of a generated data set, default ``test``).

    Returns ``{"n", "modalities", "classes", "clean": {acc, macro_f1}, "removed": {m: {acc, macro_f1}}}``
    and, with ``robustness``, ``"levels"`` and ``"noise": {m | "all": {acc: [..], macro_f1: [..],
    relative_robustness, effective_robustness?}}`` (see `polymodal.eval.robustness.robustness_report`).
    ``late_fusion_report``: the late-fusion model's report at the same levels (or its run dir, evaluated
    here on the same samples) for effective robustness. Macro-F1 averages over the classes that occur in
    the labels or the predictions (scikit-learn's ``f1_score(average="macro")``)."""
    model, tf = resolve_model(model_or_run, transform)
    samples = load_samples(samples_or_dataset, split)
    ev = _Evaluator(model, tf, samples, seed, batch_size)
    head = {"n": len(samples), "modalities": list(ev.modalities), "classes": model.classes}
    if not robustness:
        removed = {m: _scores(*ev(Condition(removed=(m,)))) for m in ev.modalities}
        return {**head, "clean": _scores(*ev(Condition())), "removed": removed}
    late = late_fusion_report
    if isinstance(late, str | os.PathLike):
        late = evaluate_classification(late, samples, robustness=True, levels=levels, seed=seed,
                                       batch_size=batch_size, progress=progress)
    return {**head, **robustness_report(ev, ev.modalities, levels, late_fusion=late, progress=progress)}


__all__ = ["evaluate_classification", "load_samples", "model_labels", "resolve_model"]
