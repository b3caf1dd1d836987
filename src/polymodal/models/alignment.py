"""`AlignmentModel`: one encoder + projection per modality into a shared D-dim space, trained with a
contrastive loss (CLIP InfoNCE or SigLIP) over modality pairs. CLIP (text+image), AudioCLIP (three
pairs), ImageBind (everything bound to an anchor) and LiT (a locked tower) are configurations of it.

- Embeddings are L2-normalised. One learnable temperature ``logit_scale`` (log-parameterised) is shared
  by every pair; the trainer calls `clamp_logit_scale` after each step (OpenCLIP's [0, ln 100]).
- Missing modalities are normal: an encoder runs only on the rows that have its modality, and a pair is
  scored over the rows that have both (a pair with fewer than 2 such rows is skipped). The loss is the
  mean over the scored pairs. The batch's masks are read once, by `features`, into a (B, M) presence
  matrix that travels with the (B, M, D) embeddings (`Features`) through merging, gathering and the loss.
- ``gather=True`` computes the distributed local loss: every rank's features are all-gathered with
  gradient, each rank scores its own rows against the global batch (see `polymodal.losses.contrastive`).
- Built from a recipe's ``model`` section by `build_alignment_model` through `AlignmentConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_dict
from ..data.sample import MODALITIES, TIME_AXIS, Batch
from ..encoders import ENCODERS, Encoder, create_encoder
from ..errors import ConfigError, InvalidInput
from ..losses.contrastive import clip_loss, siglip_loss
from ..losses.distributed import feature_group, gather_no_grad, gather_sizes, gather_with_grad, world_info
from .registry import ARCHS, check_spec, load_config, register_model_config

MAX_LOGIT_SCALE = math.log(100.0)
CLIP_INIT_SCALE = math.log(1 / 0.07)
SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = math.log(10.0), -10.0
LOSSES, PAIRINGS, PROJECTIONS = ("clip", "siglip"), ("all", "anchor"), ("linear", "none")


class Features(NamedTuple):
    """A batch's embeddings, modalities in model order: ``emb`` (B, M, D), zeros where a row lacks the
    modality, and ``present`` (B, M) bool, which rows have it."""

    emb: torch.Tensor
    present: torch.Tensor


@register_model_config("alignment")
@dataclass(frozen=True)
class AlignmentConfig:
    """The ``model`` section of an ``arch: "alignment"`` recipe (docs/alignment.md)."""

    encoders: dict[str, dict[str, Any]]  # {modality: {"name": <encoder>, **kwargs}}: the encoder registry checks
    arch: str = "alignment"
    dim: int = 128
    loss: str = "clip"
    pairing: str = "all"
    anchor: str | None = None
    locked: list[str] = field(default_factory=list)
    projections: str | dict[str, str] = "linear"  # one kind for all, or {modality: kind} (default linear)
    init_logit_scale: float | None = None  # None: ln(1/0.07) for CLIP, ln 10 for SigLIP
    init_logit_bias: float | None = None  # SigLIP only; None: -10

    def __post_init__(self) -> None:
        if self.arch != "alignment":
            raise ConfigError(f"arch must be 'alignment', got {self.arch!r}", field="arch")
        if not self.encoders:
            raise ConfigError("encoders must be a non-empty object {modality: {name, ...}}", field="encoders")
        for m, spec in self.encoders.items():
            check_spec(spec, f"encoders.{m}")
        for name in ("init_logit_scale", "init_logit_bias"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"must be a finite number (or null), got {value}", field=name)
        check_alignment(tuple(sorted(self.encoders)), self.dim, self.projections, self.loss, self.pairing,
                        self.anchor, self.locked)


def check_alignment(mods: tuple[str, ...], dim: int, projections: str | Mapping[str, str], loss: str,
                    pairing: str, anchor: str | None, locked: Iterable[str]) -> list[tuple[str, str]]:
    """The checks an alignment model's settings must pass (shared by the config and the model); returns the
    modality pairs the loss scores."""
    _check_choice(loss, LOSSES, "loss")
    _check_choice(pairing, PAIRINGS, "pairing")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ConfigError(f"dim must be a positive int, got {dim!r}", field="dim")
    if not mods:
        raise ConfigError("an alignment model needs at least one encoder", field="encoders")
    if not isinstance(projections, str) and set(projections) - set(mods):
        raise ConfigError(f"projections for unknown modalities {sorted(set(projections) - set(mods))}",
                          field="projections")
    for m in mods:
        _proj_kind(projections, m)
    for m in locked:
        if m not in mods:
            raise ConfigError(f"cannot lock {m!r}: no such encoder (have {list(mods)})", field="locked")
    return _pairs(mods, pairing, anchor)


class AlignmentModel(nn.Module):
    def __init__(self, encoders: Mapping[str, Encoder], dim: int,
                 projections: str | Mapping[str, str] = "linear", loss: str = "clip", pairing: str = "all",
                 anchor: str | None = None, locked: Iterable[str] = (), init_logit_scale: float | None = None,
                 init_logit_bias: float | None = None):
        super().__init__()
        mods = sorted(encoders)
        locked = tuple(sorted(set(locked)))
        self.pairs = check_alignment(tuple(mods), dim, projections, loss, pairing, anchor, locked)
        for m in mods:
            if m not in MODALITIES or encoders[m].modality != m:
                raise ConfigError(f"key {m!r} holds a {encoders[m].modality!r} encoder; keys must be the "
                                  f"encoder's modality, one of {MODALITIES}", field=f"encoders.{m}")
        self.modalities: tuple[str, ...] = tuple(mods)
        self.dim, self.loss_name, self.pairing, self.anchor = dim, loss, pairing, anchor
        self.encoders = nn.ModuleDict({m: encoders[m] for m in mods})
        self.projections = nn.ModuleDict({m: _projection(encoders[m], _proj_kind(projections, m), dim)
                                          for m in mods})
        siglip = loss == "siglip"
        default_scale = SIGLIP_INIT_SCALE if siglip else CLIP_INIT_SCALE
        scale = default_scale if init_logit_scale is None else float(init_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(scale))
        self.logit_bias: nn.Parameter | None = None
        if siglip:
            bias = SIGLIP_INIT_BIAS if init_logit_bias is None else float(init_logit_bias)
            self.logit_bias = nn.Parameter(torch.tensor(bias))
        self.config: dict[str, Any] = {}  # set by build_alignment_model: the dict it was built from
        self.locked = locked
        for m in self.locked:
            self.encoders[m].requires_grad_(False)
        self.train()

    # ------------------------------------------------------------------ modes and helpers
    def train(self, mode: bool = True) -> AlignmentModel:
        super().train(mode)
        for m in self.locked:  # locked towers stay in eval mode (dropout off) while the rest trains
            self.encoders[m].eval()
        return self

    def loss_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the loss (temperature, SigLIP bias): no weight decay for these."""
        return [p for p in (self.logit_scale, self.logit_bias) if p is not None]

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def preprocess(self) -> dict[str, dict[str, Any]]:
        """What the data pipeline needs per modality (tokenizer, image size, mel bins, frames)."""
        return {m: self._encoder(m).preprocess() for m in self.modalities}

    def _encoder(self, m: str) -> Encoder:
        enc = self.encoders[m]
        assert isinstance(enc, Encoder)
        return enc

    # ------------------------------------------------------------------ features
    def encode(self, modality: str, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings (N, D) of an encoder input whose rows all have the modality."""
        if modality not in self.encoders:
            raise InvalidInput(f"this model has no {modality!r} encoder (has {self.modalities})",
                               field="modality")
        enc = self.encoders[modality]
        if modality in self.locked:
            with torch.no_grad():  # no activations kept for a frozen tower
                h = enc(part)
        else:
            h = enc(part)
        out = self.projections[modality](h)
        return F.normalize(out.to(torch.promote_types(out.dtype, torch.float32)), dim=-1)

    def features(self, batch: Batch) -> Features:
        """The batch's `Features`. The one place the batch's masks are read: a modality the batch lacks is
        absent in every row. Each encoder runs only on the rows that have its modality."""
        device = self.logit_scale.device
        # At least float32 for the loss, even when the towers run in bf16 under autocast.
        dtype = torch.promote_types(self.logit_scale.dtype, torch.float32)
        n = len(batch)
        absent = torch.zeros(n, dtype=torch.bool, device=device)
        present = torch.stack([batch.mask[m].to(device=device, dtype=torch.bool) if m in batch.data else absent
                               for m in self.modalities], dim=1)
        cols = []
        for j, m in enumerate(self.modalities):
            col = torch.zeros(n, self.dim, device=device, dtype=dtype)
            rows = present[:, j].nonzero().squeeze(1)
            if rows.numel():
                col = col.index_copy(0, rows, self.encode(m, _select_rows(batch.part(m), rows, m)).to(dtype))
            cols.append(col)
        return Features(torch.stack(cols, dim=1), present)

    @torch.no_grad()
    def embed_batch(self, batch: Batch, modality: str) -> torch.Tensor:
        """Inference: normalised (N, D) embeddings of the N rows of ``batch`` that have ``modality``."""
        if modality not in self.encoders:
            raise InvalidInput(f"this model has no {modality!r} encoder (has {self.modalities})",
                               field="modality")
        if modality not in batch.data or not bool(batch.mask[modality].any()):
            return torch.zeros(0, self.dim, device=self.logit_scale.device)
        rows = batch.mask[modality].nonzero().squeeze(1)
        return self.encode(modality, _select_rows(batch.part(modality), rows, modality))

    # ------------------------------------------------------------------ loss
    def forward(self, batch: Batch, gather: bool = False, group: Any = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_from_features(self.features(batch), gather=gather, group=group)

    def loss_from_features(self, feats: Features, gather: bool = False, group: Any = None
                           ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logs) over the modality pairs. With ``gather`` every rank must call this together;
        pairs are then chosen from the global batch, so all ranks score the same pairs. The gather runs
        on ``group`` (default: `feature_group()`, kept apart from DDP's gradient all-reduce)."""
        dense, present = feats
        batch_size = dense.shape[0]
        if gather and group is None:
            group = feature_group()
        rank, world = world_info(group) if gather else (0, 1)
        offset = 0
        dense_all, present_all = dense, present
        if world > 1:
            if torch.is_grad_enabled() and not dense.requires_grad:
                # Every rank must run the gather's backward (a collective), even one whose local rows
                # carry no gradient, e.g. when it holds only a locked modality.
                dense.requires_grad_(True)
            offset = sum(gather_sizes(batch_size, dense.device, group)[:rank])
            dense_all, present_all = gather_with_grad(dense, group), gather_no_grad(present, group)
        # The loss runs in float32 even under autocast: bf16 logits would blur a large-scale softmax.
        with torch.autocast(device_type=dense.device.type, enabled=False):
            losses, logs = self._pair_losses(dense, dense_all, present_all, offset, world)
            # No scorable pair: a zero that still reaches the temperature, so backward() works everywhere.
            loss = torch.stack(losses).mean() if losses else self.logit_scale * 0.0
        logs["loss"] = float(loss.detach())
        logs["logit_scale"] = float(self.logit_scale.detach().exp())
        if self.logit_bias is not None:
            logs["logit_bias"] = float(self.logit_bias.detach())
        return loss, logs

    def _pair_losses(self, dense: torch.Tensor, dense_all: torch.Tensor, present_all: torch.Tensor, offset: int,
                     world: int) -> tuple[list[torch.Tensor], dict[str, float]]:
        """One loss per pair with >= 2 rows (globally) that have both modalities. Local rows are
        ``offset .. offset + len(dense)`` of the gathered batch; labels are their columns among its rows."""
        scale = self.logit_scale.exp()
        local = slice(offset, offset + dense.shape[0])
        col = {m: j for j, m in enumerate(self.modalities)}
        losses: list[torch.Tensor] = []
        logs: dict[str, float] = {}
        for m1, m2 in self.pairs:
            i, j = col[m1], col[m2]
            both_all = present_all[:, i] & present_all[:, j]
            n = int(both_all.sum())
            if n < 2:
                continue
            both = both_all[local]
            labels = (torch.cumsum(both_all.long(), 0) - 1)[local][both]
            a, b = dense[both, i], dense[both, j]
            if self.logit_bias is None:
                pair_loss = clip_loss(a, b, scale, a_all=dense_all[both_all, i], b_all=dense_all[both_all, j],
                                      labels=labels, denom=n / world)
            else:
                pair_loss = siglip_loss(a, b, scale, self.logit_bias, b_all=dense_all[both_all, j],
                                        labels=labels, denom=n / world)
            losses.append(pair_loss)
            logs[f"loss/{m1}-{m2}"] = float(pair_loss.detach())
            logs[f"pairs/{m1}-{m2}"] = float(n)
        return losses, logs


def merge_features(parts: Sequence[Features]) -> Features:
    """The features of consecutive micro-batches as those of one batch (their rows in order); for
    contrastive gradient accumulation."""
    return Features(torch.cat([p.emb for p in parts]), torch.cat([p.present for p in parts]))


def _select_rows(part: dict[str, torch.Tensor], rows: torch.Tensor, m: str) -> dict[str, torch.Tensor]:
    """The encoder input restricted to ``rows``, with padding beyond the longest selected row trimmed
    (encoders are padding-invariant, so this only saves compute)."""
    sub = {k: v.index_select(0, rows) for k, v in part.items()}
    pm = sub.get("pad_mask")
    axis = TIME_AXIS.get(m)
    if pm is not None and axis is not None and pm.any():
        length = int(torch.arange(1, pm.shape[1] + 1, device=pm.device)[pm.any(dim=0)].max())
        dim = axis + 1 if axis >= 0 else axis
        sub["values"] = sub["values"].narrow(dim, 0, length)
        sub["pad_mask"] = pm[:, :length]
    return sub


def _check_choice(value: Any, choices: tuple[str, ...], field: str) -> None:
    if value not in choices:
        raise ConfigError(f"must be one of {choices}, got {value!r}", field=field)


def _pairs(mods: tuple[str, ...], pairing: str, anchor: str | None) -> list[tuple[str, str]]:
    if pairing == "all":
        if anchor is not None:
            raise ConfigError("anchor is only used with pairing 'anchor'", field="anchor")
        return [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
    if anchor not in mods:
        raise ConfigError(f"pairing 'anchor' needs an anchor among the encoders {mods}, got {anchor!r}",
                          field="anchor")
    return [(anchor, m) for m in mods if m != anchor]


def _proj_kind(projections: str | Mapping[str, str], m: str) -> str:
    kind = projections if isinstance(projections, str) else projections.get(m, "linear")
    _check_choice(kind, PROJECTIONS, f"projections.{m}")
    return kind


def _projection(enc: Encoder, kind: str, dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(enc.output_dim, dim, bias=False)
    if enc.output_dim != dim:
        raise ConfigError(f"projection 'none' needs the encoder output ({enc.output_dim}) to equal dim ({dim})",
                          field=f"projections.{enc.modality}")
    return nn.Identity()


# ---------------------------------------------------------------------------------------------- from config

@ARCHS.register("alignment")
def build_alignment_model(cfg: Mapping[str, Any]) -> AlignmentModel:
    """Build from a plain dict (a recipe's ``model`` section), checked as an `AlignmentConfig`:
    ``{"arch": "alignment", "dim": 128, "loss": "clip", "pairing": "all", "anchor": null, "locked": [],
    "projections": "linear" | {modality: "linear" | "none"},
    "encoders": {"text": {"name": "text_transformer", **kwargs}, ...}}``. The checked config, defaults
    written out, is kept as ``model.config`` (plain JSON) so a checkpoint rebuilds the model exactly even if
    a default changes later."""
    c = load_config(AlignmentConfig, cfg)
    encoders = {m: build_encoder(m, spec) for m, spec in c.encoders.items()}
    model = AlignmentModel(encoders, c.dim, projections=c.projections, loss=c.loss, pairing=c.pairing,
                           anchor=c.anchor, locked=c.locked, init_logit_scale=c.init_logit_scale,
                           init_logit_bias=c.init_logit_bias)
    model.config = to_dict(c)
    return model


def build_encoder(m: str, spec: Any) -> Encoder:
    field = f"encoders.{m}"
    if m not in MODALITIES:
        raise ConfigError(f"unknown modality {m!r}; expected one of {MODALITIES}", field=field)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError('expected {"name": <encoder>, ...kwargs}', field=field)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS.names())})", field=field)
    try:
        enc = create_encoder(name, **kwargs)
    except TypeError as exc:  # unknown / missing keyword arguments
        raise ConfigError(f"bad arguments for encoder {name!r}: {exc}", field=field) from None
    except ConfigError as exc:
        inner = f"{field}.{exc.field.rsplit('.', 1)[-1]}" if exc.field else field
        raise ConfigError(exc.message, field=inner) from None
    if enc.modality != m:
        raise ConfigError(f"encoder {name!r} is a {enc.modality} encoder, not {m}", field=field)
    return enc
