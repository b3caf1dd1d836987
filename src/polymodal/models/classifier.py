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
  This is the library's only modality dropout (``train.modality_dropout`` was removed).

One mask per forward. Presence is decided once, in `FusionClassifier._inputs`: ``batch.mask`` (or the
``mask`` argument, which replaces it), and a modality given without a mask is present in every row. After
modality dropout that same mask goes to the encoders (which run on the whole batch and, by the encoder contract,
return zeros for absent rows) and to the fusion, which ignores absent rows whatever they hold (``torch.where``
before any layer, see `polymodal.fusion.base`). The classifier itself never zeroes a row.

For the trainer (``arch: fusion``): `build_fusion_model(cfg)` builds a `FusionModel` from a `FusionModelConfig`
— the classifier plus where its labels live (``label_field``, a dotted metadata key, and an optional
``classes`` list mapping string labels to indices), ``forward(batch) -> (loss, logs)``,
``predict(batch) -> logits`` and ``.config`` (the resolved dict a checkpoint is rebuilt from); ``init_from``
starts its encoders from an alignment run's.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_dict
from ..data.sample import Batch
from ..errors import ConfigError, InvalidInput
from ..fusion import FUSIONS, Fusion, create_fusion
from .alignment import build_encoder  # one encoder factory for every arch
from .fusion_config import FusionModelConfig
from .loading import load_model
from .registry import ARCHS, load_config

Inputs = Batch | Mapping[str, torch.Tensor]
Parts = dict[str, dict[str, torch.Tensor]]  # modality -> encoder input without its mask, or {"values": features}


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
        logits: torch.Tensor = self.head(self.fuse(inputs, mask))
        return logits

    def fuse(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The fusion's output (B, fusion.out_dim), before the head (modality dropout in training)."""
        parts, masks = self._inputs(inputs, mask)
        if self.training and self.modality_dropout > 0:
            masks = drop_modalities(masks, self.fusion.modalities, self.modality_dropout, _batch_size(masks))
        features: dict[str, torch.Tensor] = {}
        pad: dict[str, torch.Tensor] = {}
        for m, part in parts.items():
            if m not in self.encoders:
                features[m] = part["values"]
                continue
            enc = self.encoders[m]
            part = {**part, "mask": masks[m]}
            seq_fn = getattr(enc, "forward_sequence", None)
            if self.fusion.accepts_sequences and callable(seq_fn):
                # optional encoder hook: (B, L, D) states + (B, L) padding mask, for mid-level fusion
                features[m], pad[m] = seq_fn(part)
            else:
                features[m] = enc(part)
        kwargs = {"pad_mask": pad} if pad and self.fusion.accepts_sequences else {}
        fused: torch.Tensor = self.fusion(features, masks, **kwargs)
        return fused

    def _inputs(self, inputs: Inputs, mask: Mapping[str, torch.Tensor] | None) -> tuple[Parts, dict[str, torch.Tensor]]:
        """(input per given modality of the fusion, presence mask per modality): the one place where a
        modality given without a mask becomes present in every row."""
        if isinstance(inputs, Batch):
            parts = {m: {k: v for k, v in inputs.part(m).items() if k != "mask"}
                     for m in self.fusion.modalities if m in inputs.data}
            given = inputs.mask if mask is None else mask
        else:
            unknown = sorted(set(inputs) - set(self.fusion.modalities))
            if unknown:
                raise InvalidInput(f"unknown modality {unknown[0]!r} (model takes {list(self.fusion.modalities)})",
                                   field="inputs")
            parts = {m: {"values": x} for m, x in inputs.items()}
            given = mask or {}
        masks = {m: v.to(torch.bool) for m, v in given.items() if m in self.fusion.dims}
        for m, part in parts.items():
            if m not in masks:
                x = part["values"]
                masks[m] = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return parts, masks

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


def _batch_size(masks: Mapping[str, torch.Tensor]) -> int:
    for t in masks.values():
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
            logits: torch.Tensor = self.classifier(batch, mask)
            return logits
        finally:
            self.train(was)

    @torch.no_grad()
    def fused(self, batch: Batch, mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The fusion's output (before the head) in eval mode; for modality completion."""
        was = self.training
        self.eval()
        try:
            return self.classifier.fuse(batch, mask)
        finally:
            self.train(was)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@ARCHS.register("fusion")
def build_fusion_model(cfg: Mapping[str, Any]) -> FusionModel:
    """Build from a plain dict (a recipe's ``model`` section), checked as a `FusionModelConfig`::

        {"arch": "fusion", "num_classes": 10, "label_field": "label", "classes": null,
         "encoders": {"image": {"name": "image_cnn", ...}, "audio": {"name": "audio_cnn", ...}},
         "fusion": {"name": "attention", "hidden": 64}, "modality_dropout": 0.3,
         "init_from": {"run": "runs/clip", "freeze": true, "modalities": ["image"]}}

    ``init_from`` copies an alignment run's encoders (architecture and weights) for ``modalities`` (default:
    every modality the run has); an encoder spec given for them must equal the run's. ``model.config`` is
    the resolved dict: the run's encoder specs filled in and ``init_from.weights_in_checkpoint: true``, so
    rebuilding a trained run never reads the alignment run again (its weights are in the checkpoint)."""
    c = load_config(FusionModelConfig, cfg)
    specs, init_mods, donor = _encoder_specs(c)
    encoders = {m: build_encoder(m, spec) for m, spec in sorted(specs.items())}
    if donor is not None:
        for m in init_mods:
            encoders[m].load_state_dict(donor.encoders[m].state_dict())
    n_classes = c.n_classes
    assert n_classes is not None  # checked by FusionModelConfig
    fusion = _build_fusion(c.fusion, {m: int(e.output_dim) for m, e in encoders.items()}, n_classes)
    clf = FusionClassifier(encoders, fusion, num_classes=n_classes, modality_dropout=c.modality_dropout)
    frozen = init_mods if c.init_from is not None and c.init_from.freeze else []
    model = FusionModel(clf, c.label_field, c.classes, frozen)
    model.config = _resolved(c, specs, init_mods if donor is not None else None)
    return model


def _resolved(c: FusionModelConfig, specs: dict[str, Any], init_mods: list[str] | None) -> dict[str, Any]:
    """The config a checkpoint is rebuilt from, as plain JSON: every default written out, the class count
    resolved, the encoder specs taken from ``init_from``'s run, and that run marked as read (``init_mods`` not
    None: its weights are in this model's checkpoint)."""
    init = c.init_from
    if init is not None and init_mods is not None:
        init = dataclasses.replace(init, modalities=init_mods, weights_in_checkpoint=True)
    out: dict[str, Any] = to_dict(dataclasses.replace(c, num_classes=c.n_classes, encoders=specs, init_from=init))
    return out


def _build_fusion(spec: Mapping[str, Any], dims: dict[str, int], num_classes: int) -> Fusion:
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


def _encoder_specs(c: FusionModelConfig) -> tuple[dict[str, Any], list[str], Any]:
    """(encoder specs with ``init_from``'s filled in from its run, the modalities it initialises, the loaded
    alignment model, or None when there is none or its weights are in this model's checkpoint)."""
    specs = copy.deepcopy(c.encoders)
    init = c.init_from
    if init is None:
        return specs, [], None
    if init.weights_in_checkpoint:
        return specs, sorted(init.modalities or []), None
    donor, _, run_cfg = load_model(init.run)
    if run_cfg.get("arch") != "alignment":
        raise ConfigError(f"init_from needs an alignment run, got a {run_cfg.get('arch')!r} run",
                          field="init_from.run", source=init.run)
    have = run_cfg["model"]["encoders"]
    mods = init.modalities if init.modalities is not None else sorted(have)
    for m in mods:
        if m not in have:
            raise ConfigError(f"the run has no {m!r} encoder (it has {sorted(have)})", field="init_from.modalities",
                              source=init.run)
        if m in specs and specs[m] != have[m]:
            raise ConfigError(f"differs from the run's encoder {have[m]}; omit it to take the run's",
                              field=f"encoders.{m}", source=init.run)
        specs[m] = copy.deepcopy(have[m])
    return specs, sorted(mods), donor
