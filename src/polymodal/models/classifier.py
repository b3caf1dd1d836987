"""Multi-stream classifier: per-modality encoders -> fusion -> head, composed by injection.

``FusionClassifier(encoders, fusion, head, num_classes, modality_dropout)``:

- ``encoders``: ``{modality: Encoder}`` (``forward(Batch.part(m)) -> (B, D)``); may be empty, then the
  model takes precomputed features ``{modality: (B, D)}``. A modality with an input but no encoder is
  used as a precomputed feature too.
- ``fusion``: a :class:`polymodal.fusion.Fusion`; it decides which modalities are used.
- ``head``: maps the fused vector to logits; ``None`` builds ``Linear(fusion.out_dim, num_classes)``, or
  nothing when the fusion already produces logits (late fusion).
- ``modality_dropout``: in training, each present modality of each sample is dropped (masked) with this
  probability, but a sample never loses all of its modalities (one of them, chosen at random, is kept).

Missing modalities travel as masks; an encoder runs on the whole batch (missing rows are zeros in a
``Batch``) and the fusion ignores the rows the mask marks missing.

For the trainer (``arch: fusion``): `build_fusion_model(cfg)` builds a `FusionModel` — the classifier plus
where its labels live (``label_field``, a dotted metadata key, and an optional ``classes`` list mapping
string labels to indices), ``forward(batch) -> (loss, logs)``, ``predict(batch) -> logits`` and
``.config`` (the resolved dict a checkpoint is rebuilt from); ``init_from`` starts its encoders from an
alignment run's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Batch
from ..errors import ConfigError, InvalidInput
from ..fusion import FUSIONS, Fusion, create_fusion
from .alignment import build_encoder  # one encoder factory for every arch
from .loading import load_model
from .registry import ARCHS

Inputs = Batch | Mapping[str, torch.Tensor]


class FusionClassifier(nn.Module):
    def __init__(self, encoders: Mapping[str, nn.Module], fusion: Fusion, head: nn.Module | None = None,
                 num_classes: int | None = None, modality_dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError(f"modality_dropout must be in [0, 1), got {modality_dropout}", field="modality_dropout")
        unknown = sorted(set(encoders) - set(fusion.modalities))
        if unknown:
            raise ConfigError(f"encoder for {unknown[0]!r}, which the fusion does not take "
                              f"({list(fusion.modalities)})", field="encoders")
        for m, enc in encoders.items():
            out = getattr(enc, "output_dim", None)
            if out is not None and out != fusion.dims[m]:
                raise ConfigError(f"encoder '{m}' outputs {out} dims but the fusion expects {fusion.dims[m]}",
                                  field="encoders")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.head = _make_head(fusion, head, num_classes)
        self.num_classes = num_classes if num_classes is not None else fusion.out_dim
        self.modality_dropout = float(modality_dropout)

    def forward(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, num_classes). ``inputs``: a ``Batch`` (its masks are used unless ``mask`` is given) or
        ``{modality: tensor}`` (features, or encoder inputs for modalities that have an encoder)."""
        features, masks, pad = self.encode(inputs, mask)
        if self.training and self.modality_dropout > 0:
            masks = drop_modalities(masks, self.fusion.modalities, self.modality_dropout, _batch_size(features, masks))
        kwargs = {"pad_mask": pad} if pad and self.fusion.accepts_sequences else {}
        return self.head(self.fusion(features, masks, **kwargs))

    def encode(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run the encoders: (features, presence masks, sequence padding masks) for the fusion's modalities."""
        if isinstance(inputs, Batch):
            parts = {m: inputs.part(m) for m in self.fusion.modalities if m in inputs.data}
            masks = dict(inputs.mask if mask is None else mask)
        else:
            unknown = sorted(set(inputs) - set(self.fusion.modalities))
            if unknown:
                raise InvalidInput(f"unknown modality {unknown[0]!r} (model takes {list(self.fusion.modalities)})",
                                   field="inputs")
            masks = dict(mask or {})
            parts = {m: {"values": x, **({"mask": masks[m]} if m in masks else {})} for m, x in inputs.items()}
        features: dict[str, torch.Tensor] = {}
        pad: dict[str, torch.Tensor] = {}
        for m, part in parts.items():
            if m not in self.encoders:
                features[m] = part["values"]
                continue
            enc = self.encoders[m]
            if "mask" not in part:
                part = {**part, "mask": torch.ones(part["values"].shape[0], dtype=torch.bool,
                                                   device=part["values"].device)}
            seq_fn = getattr(enc, "forward_sequence", None)
            if self.fusion.accepts_sequences and callable(seq_fn):
                # optional encoder hook: (B, L, D) states + (B, L) padding mask, for mid-level fusion
                features[m], pad[m] = seq_fn(part)
            else:
                features[m] = enc(part)
        masks = {m: v for m, v in masks.items() if m in self.fusion.dims}
        for m, x in features.items():  # a feature without a mask is present in every row
            masks.setdefault(m, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
        return features, masks, pad

    def loss_terms(self, inputs: Inputs, labels: torch.Tensor,
                   mask: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``{"loss": total, "task": cross-entropy, **raw fusion aux terms}``."""
        logits = self(inputs, mask)
        task = F.cross_entropy(logits, labels)
        terms = {"task": task, **self.fusion.aux_losses()}
        aux = self.fusion.aux_loss()
        terms["loss"] = task if aux is None else task + aux
        return terms

    def loss(self, inputs: Inputs, labels: torch.Tensor, mask: Mapping[str, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """Cross-entropy plus the fusion's weighted auxiliary losses (MISA)."""
        return self.loss_terms(inputs, labels, mask)["loss"]


def drop_modalities(mask: Mapping[str, torch.Tensor], modalities: tuple[str, ...], p: float, batch: int,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mask each present (sample, modality) with probability ``p``, never all of a sample's modalities."""
    device = next(iter(mask.values())).device if mask else torch.device("cpu")
    has = torch.stack([mask[m].to(torch.bool) if m in mask else torch.zeros(batch, dtype=torch.bool, device=device)
                       for m in modalities], dim=1)  # (B, M)
    drop = (torch.rand(has.shape, generator=generator).to(device) < p) & has
    kept = has & ~drop
    lost_all = has.any(dim=1) & ~kept.any(dim=1)
    # for those rows keep one present modality, uniformly at random
    scores = torch.rand(has.shape, generator=generator).to(device).masked_fill(~has, -1.0)
    rescue = F.one_hot(scores.argmax(dim=1), len(modalities)).to(torch.bool) & lost_all.unsqueeze(1)
    kept = kept | rescue
    out = dict(mask)
    for i, m in enumerate(modalities):
        if m in mask:
            out[m] = kept[:, i]
    return out


def _batch_size(features: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> int:
    for t in list(features.values()) + list(masks.values()):
        return int(t.shape[0])
    raise InvalidInput("no features and no masks: cannot tell the batch size", field="inputs")


def _make_head(fusion: Fusion, head: nn.Module | None, num_classes: int | None) -> nn.Module:
    if fusion.produces_logits:
        if head is not None:
            raise ConfigError("this fusion already produces logits; pass head=None", field="head")
        if num_classes is not None and num_classes != fusion.out_dim:
            raise ConfigError(f"fusion produces {fusion.out_dim} logits but num_classes={num_classes}",
                              field="num_classes")
        return nn.Identity()
    if head is not None:
        return head
    if not num_classes:
        raise ConfigError("num_classes is required when no head is given", field="num_classes")
    return nn.Linear(fusion.out_dim, num_classes)


# ------------------------------------------------------------------------------------ trainer-facing model

def read_field(metadata: Mapping[str, Any], field: str) -> Any:
    """``metadata`` at a dotted path (``"labels.color"``); KeyError when any part is missing."""
    node: Any = metadata
    for part in field.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def label_ids(metadata: Sequence[Mapping[str, Any]], field: str, num_classes: int,
              classes: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> list[int]:
    """Integer class of every row: ``metadata[i][field]`` (dotted), an int in ``[0, num_classes)`` or a
    string named in ``classes``. Errors name the sample and the field."""
    index = {c: i for i, c in enumerate(classes or ())}
    out = []
    for i, meta in enumerate(metadata):
        where = f"sample {ids[i]}" if ids is not None else f"row {i}"
        try:
            value = read_field(meta, field)
        except KeyError:
            raise InvalidInput(f"{where} has no label at metadata.{field}", field="label_field") from None
        if isinstance(value, str):
            if value not in index:
                known = f"classes {list(classes)}" if classes else "no class list (set model.classes)"
                raise InvalidInput(f"{where}: label {value!r} is not in {known}", field="classes")
            value = index[value]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
            raise InvalidInput(f"{where}: label {value!r} is not a class index in [0, {num_classes})",
                               field="label_field")
        out.append(int(value))
    return out


class FusionModel(nn.Module):
    """A `FusionClassifier` plus where its labels live: what `polymodal train` trains for ``arch: fusion``.

    ``forward(batch) -> (loss, logs)`` (cross-entropy + the fusion's auxiliary losses); ``predict(batch)``
    -> logits; ``labels(batch)`` -> LongTensor. Frozen encoders get no gradient and stay in eval mode."""

    def __init__(self, classifier: FusionClassifier, label_field: str = "label",
                 classes: Sequence[str] | None = None, frozen: Sequence[str] = ()):
        super().__init__()
        self.classifier = classifier
        self.label_field = label_field
        self.classes = list(classes) if classes is not None else None
        self.modalities: tuple[str, ...] = classifier.fusion.modalities
        self.num_classes = int(classifier.num_classes)
        self.frozen = tuple(sorted(frozen))
        for m in self.frozen:
            classifier.encoders[m].requires_grad_(False)
        self.config: dict[str, Any] = {}  # set by build_fusion_model: the resolved dict it was built from
        self.train()

    def train(self, mode: bool = True) -> FusionModel:
        super().train(mode)
        for m in self.frozen:
            self.classifier.encoders[m].eval()
        return self

    def preprocess(self) -> dict[str, dict[str, Any]]:
        """What the data pipeline needs per modality (the encoders' requirements)."""
        out: dict[str, dict[str, Any]] = {}
        encoders = dict(self.classifier.encoders.items())
        for m in self.modalities:
            fn = getattr(encoders.get(m), "preprocess", None)
            out[m] = dict(fn()) if callable(fn) else {}
        return out

    def labels(self, batch: Batch) -> torch.Tensor:
        ids = label_ids(batch.metadata, self.label_field, self.num_classes, self.classes, batch.ids)
        return torch.tensor(ids, dtype=torch.long, device=_model_device(self))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = self.labels(batch)
        logits = self.classifier(batch)
        task = F.cross_entropy(logits.float(), labels)
        aux = self.classifier.fusion.aux_loss()
        loss = task if aux is None else task + aux
        logs = {"loss": float(loss.detach()), "loss/task": float(task.detach()),
                "acc": float((logits.argmax(dim=1) == labels).float().mean())}
        logs.update({f"loss/{k}": float(v.detach()) for k, v in self.classifier.fusion.aux_losses().items()})
        return loss, logs

    @torch.no_grad()
    def predict(self, batch: Batch, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, num_classes) in eval mode; ``mask`` overrides ``batch.mask`` (e.g. a modality removed)."""
        was = self.training
        self.eval()
        try:
            return self.classifier(batch, mask)
        finally:
            self.train(was)

    @torch.no_grad()
    def fused(self, batch: Batch, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The fusion's output (before the head) in eval mode; for modality completion."""
        was = self.training
        self.eval()
        try:
            features, masks, pad = self.classifier.encode(batch, mask)
            kwargs = {"pad_mask": pad} if pad and self.classifier.fusion.accepts_sequences else {}
            return self.classifier.fusion(features, masks, **kwargs)
        finally:
            self.train(was)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


_CONFIG_KEYS = ("arch", "num_classes", "label_field", "classes", "encoders", "fusion", "modality_dropout",
                "init_from")


@ARCHS.register("fusion")
def build_fusion_model(cfg: Mapping[str, Any]) -> FusionModel:
    """Build from a plain dict (a recipe's ``model`` section)::

        {"arch": "fusion", "num_classes": 10, "label_field": "label", "classes": null,
         "encoders": {"image": {"name": "image_cnn", ...}, "audio": {"name": "audio_cnn", ...}},
         "fusion": {"name": "attention", "hidden": 64}, "modality_dropout": 0.3,
         "init_from": {"run": "runs/clip", "freeze": true, "modalities": ["image"]}}

    ``init_from`` copies an alignment run's encoders (architecture and weights) for ``modalities`` (default:
    every modality the run has); an encoder spec given for them must equal the run's. ``model.config`` is
    the resolved dict: the run's encoder specs filled in and ``init_from.weights_in_checkpoint: true``, so
    rebuilding a trained run never reads the alignment run again (its weights are in the checkpoint)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a JSON object, got {type(cfg).__name__}", field="model")
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; expected some of {list(_CONFIG_KEYS)}", field="model")
    if cfg.get("arch") != "fusion":
        raise ConfigError(f"arch must be 'fusion', got {cfg.get('arch')!r}", field="arch")
    resolved = copy.deepcopy(dict(cfg))
    classes, num_classes = _classes(resolved)
    label_field = resolved.setdefault("label_field", "label")
    if not isinstance(label_field, str) or not label_field:
        raise ConfigError(f"must be a dotted metadata key, got {label_field!r}", field="label_field")
    specs = resolved.get("encoders") or {}
    if not isinstance(specs, Mapping):
        raise ConfigError("encoders must be an object {modality: {name, ...}}", field="encoders")
    init, donor = _init_source(resolved, dict(specs))
    if not resolved["encoders"]:
        raise ConfigError("a fusion model needs at least one encoder", field="encoders")
    encoders = {m: build_encoder(m, spec) for m, spec in sorted(resolved["encoders"].items())}
    if donor is not None and init is not None:
        for m in init["modalities"]:
            encoders[m].load_state_dict(donor.encoders[m].state_dict())
    fusion = _build_fusion(resolved.get("fusion"), {m: int(e.output_dim) for m, e in encoders.items()}, num_classes)
    clf = FusionClassifier(encoders, fusion, num_classes=num_classes,
                           modality_dropout=float(resolved.setdefault("modality_dropout", 0.0)))
    frozen = init["modalities"] if init is not None and init.get("freeze", False) else []
    model = FusionModel(clf, label_field, classes, frozen)
    model.config = resolved
    return model


def _classes(cfg: dict[str, Any]) -> tuple[list[str] | None, int]:
    classes, n = cfg.get("classes"), cfg.get("num_classes")
    if classes is not None and (not isinstance(classes, list) or not classes
                                or not all(isinstance(c, str) for c in classes) or len(set(classes)) < len(classes)):
        raise ConfigError("must be a non-empty list of distinct class names", field="classes")
    if n is None and classes is not None:
        n = cfg["num_classes"] = len(classes)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"must be an int >= 2 (or give classes), got {n!r}", field="num_classes")
    if classes is not None and len(classes) != n:
        raise ConfigError(f"{len(classes)} classes listed but num_classes is {n}", field="num_classes")
    return classes, n


def _build_fusion(spec: Any, dims: dict[str, int], num_classes: int) -> Fusion:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError('expected {"name": <fusion>, ...kwargs}', field="fusion")
    name = spec["name"]
    if name not in FUSIONS:
        raise ConfigError(f"unknown fusion {name!r} (known: {', '.join(FUSIONS.names())})", field="fusion.name")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if name == "late":
        kwargs.setdefault("num_classes", num_classes)
    try:
        return create_fusion(name, dims, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for fusion {name!r}: {exc}", field="fusion") from None


def _init_source(cfg: dict[str, Any], specs: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """Resolve ``init_from`` in place: fill the run's encoder specs into ``cfg["encoders"]``. Returns
    (init dict or None, the loaded alignment model or None when the weights are in the checkpoint)."""
    cfg["encoders"] = specs
    init = cfg.get("init_from")
    if init is None:
        return None, None
    if not isinstance(init, dict) or not isinstance(init.get("run"), str):
        raise ConfigError('expected {"run": <alignment run dir>, "freeze": bool, "modalities": [...]}',
                          field="init_from")
    extra = sorted(set(init) - {"run", "freeze", "modalities", "weights_in_checkpoint"})
    if extra:
        raise ConfigError(f"unknown keys {extra}", field="init_from")
    if init.get("weights_in_checkpoint"):
        missing = [m for m in init.get("modalities", []) if m not in specs]
        if missing:
            raise ConfigError(f"no encoder spec for {missing} in a resolved config", field="init_from")
        return init, None
    donor, _, run_cfg = load_model(init["run"])
    if run_cfg.get("arch") != "alignment":
        raise ConfigError(f"init_from needs an alignment run, got a {run_cfg.get('arch')!r} run",
                          field="init_from.run", source=init["run"])
    have = run_cfg["model"]["encoders"]
    mods = init.get("modalities", sorted(have))
    for m in mods:
        if m not in have:
            raise ConfigError(f"the run has no {m!r} encoder (it has {sorted(have)})", field="init_from.modalities",
                              source=init["run"])
        if m in specs and specs[m] != have[m]:
            raise ConfigError(f"differs from the run's encoder {have[m]}; omit it to take the run's",
                              field=f"encoders.{m}", source=init["run"])
        specs[m] = copy.deepcopy(have[m])
    init["modalities"] = sorted(mods)
    init["weights_in_checkpoint"] = True
    return init, donor
