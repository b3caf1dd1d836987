"""Model parallelism for the language model: FSDP and tensor parallel, activation checkpointing, memory per rank.

``train.parallel`` picks how several processes (``torchrun``) share the work; one process ignores it:

- ``"ddp"`` (default): every rank holds the whole model and a disjoint share of each global batch; DDP averages
  the gradients.
- ``"fsdp"``: torch's FSDP2 (``fully_shard``) on every transformer layer, then on the whole model: parameters,
  gradients and optimizer state are sharded on dim 0 across the ranks (the optimizer, built after sharding, holds
  ``DTensor`` shards); a layer's parameters are all-gathered for its forward and backward, its gradients
  reduce-scattered (averaged). Still data parallel: disjoint shares of the batch, as with DDP.
- ``"tp"``: tensor parallel (``parallelize_module`` on a 1-D mesh) inside every Llama/Qwen2-style decoder layer:
  ``q/k/v_proj`` and ``gate/up_proj`` column-wise, ``o_proj`` and ``down_proj`` row-wise, so each rank holds
  ``heads / world`` attention heads and ``intermediate / world`` MLP columns; embeddings and norms stay replicated.
  Not data parallel: every rank trains on the SAME global batch (`Parallel.data_world` is 1).

Layers are found generically in any module tree (`decoder_layers`): transformers' ``GradientCheckpointingLayer``
subclasses, or the classes a ``PreTrainedModel`` lists in ``_no_split_modules`` — an ``lm`` run's
``Qwen2ForCausalLM`` or the LM inside a multimodal model alike.

Checkpoints stay ordinary: `Parallel.model_state` gathers a full state dict (rank 0 keeps it, on the CPU) and
`Parallel.optimizer_state` full optimizer tensors, in the same format as a one-process run, so a run saved under
fsdp/tp loads in one process and resumes under any strategy (`Parallel.load_model_state`,
`Parallel.optimizer_tensors` shard them again).

`rank_memory` counts the bytes of parameters, gradients and optimizer state held by one rank (local shards of
DTensors), what the trainer logs at the start of a run and ``bench/parallel_memory.py`` compares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..config import PARALLEL, TrainConfig
from ..errors import ConfigError
from . import checkpoint as ck
from .distributed import DistEnv

STRATEGIES: tuple[str, ...] = PARALLEL
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
TP_COLWISE = ("q_proj", "k_proj", "v_proj")
TP_MLP_COLWISE = ("gate_proj", "up_proj")
CACHE_ARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # decoder layers' KV-cache arguments


# ------------------------------------------------------------------------------------------- module tree

def _class_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _is_hf_pretrained(module: nn.Module) -> bool:
    return "PreTrainedModel" in _class_names(module)


def _outermost(model: nn.Module, pick: Callable[[str, nn.Module], bool]) -> list[nn.Module]:
    """Modules of ``model`` (itself included) for which ``pick(name, module)`` holds and that sit inside no other
    such module, in ``named_modules`` order."""
    out: list[nn.Module] = []
    inside: set[int] = set()
    for name, m in model.named_modules():
        if id(m) in inside or not pick(name, m):
            continue
        out.append(m)
        inside.update(id(x) for x in m.modules())
    return out


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer layers of ``model`` (outermost ones): transformers' ``GradientCheckpointingLayer``
    subclasses, or items of a layer list (``...layers.3``) whose class an enclosing ``PreTrainedModel`` names in
    ``_no_split_modules`` (which also lists embeddings)."""
    no_split: set[str] = set()
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None) if _is_hf_pretrained(m) else None
        if isinstance(names, list | tuple | set):
            no_split.update(str(n) for n in names)
    return _outermost(model, lambda name, m: "GradientCheckpointingLayer" in _class_names(m)
                      or (type(m).__name__ in no_split and name.rsplit(".", 1)[-1].isdigit()))


def _linear(parent: nn.Module, name: str) -> nn.Linear | None:
    child = getattr(parent, name, None)
    return child if isinstance(child, nn.Linear) else None


def _attention(layer: nn.Module) -> tuple[str, nn.Module] | None:
    """(attribute name, module) of a Llama-style attention (``q/k/v/o_proj`` linears) in ``layer``."""
    for name in ATTENTION_NAMES:
        attn = getattr(layer, name, None)
        if isinstance(attn, nn.Module) and all(_linear(attn, p) for p in (*TP_COLWISE, "o_proj")):
            return name, attn
    return None


def _heads(attn: nn.Module) -> tuple[int, int]:
    """(attention heads, key/value heads) of a Llama-style attention module."""
    cfg = getattr(attn, "config", None)
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv, int):
        return heads, kv
    head_dim = getattr(attn, "head_dim", None)
    q, k = _linear(attn, "q_proj"), _linear(attn, "k_proj")
    if not isinstance(head_dim, int) or q is None or k is None:
        raise ConfigError(f"cannot tell the attention heads of {type(attn).__name__} for tensor parallel",
                          field="train.parallel")
    return q.out_features // head_dim, k.out_features // head_dim


def tp_layers(model: nn.Module, world: int) -> list[tuple[nn.Module, dict[str, str]]]:
    """(layer, {submodule path: "colwise" | "rowwise"}) for every Llama/Qwen2-style decoder layer of ``model``;
    ConfigError when there is none, or when ``world`` does not divide a layer's heads, KV heads or MLP width."""
    out: list[tuple[nn.Module, dict[str, str]]] = []
    for layer in decoder_layers(model):
        found = _attention(layer)
        mlp = getattr(layer, "mlp", None)
        if found is None or not isinstance(mlp, nn.Module) or not all(
                _linear(mlp, p) for p in (*TP_MLP_COLWISE, "down_proj")):
            continue
        name, attn = found
        heads, kv = _heads(attn)
        width = _linear(mlp, "up_proj").out_features  # type: ignore[union-attr]  # checked just above
        if heads % world or kv % world or width % world:
            raise ConfigError(f"tensor parallel over {world} processes splits the attention heads ({heads}), the "
                              f"key/value heads ({kv}) and the MLP width ({width}) across them: each must be a "
                              f"multiple of {world} (use fewer processes or train.parallel fsdp)",
                              field="train.parallel")
        plan = {f"{name}.{p}": "colwise" for p in TP_COLWISE} | {f"{name}.o_proj": "rowwise"}
        plan |= {f"mlp.{p}": "colwise" for p in TP_MLP_COLWISE} | {"mlp.down_proj": "rowwise"}
        out.append((layer, plan))
    if not out:
        raise ConfigError("train.parallel tp needs Llama/Qwen2-style decoder layers (self_attn.{q,k,v,o}_proj, "
                          "mlp.{gate,up,down}_proj); this model has none (use fsdp)", field="train.parallel")
    return out


# --------------------------------------------------------------------------------- activation checkpointing

def _checkpoint_forward(layer: nn.Module) -> None:
    """Run ``layer.forward`` under non-reentrant ``torch.utils.checkpoint`` while training with gradients (an
    instance attribute: parameter names stay as they are). As transformers does, a KV cache is not passed in then:
    the recompute would append the keys to it a second time."""
    if getattr(layer, "_polymodal_checkpointed", False):
        return
    inner = layer.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if layer.training and torch.is_grad_enabled():
            kwargs.update({k: None for k in CACHE_ARGS if k in kwargs})
            kwargs.update({"use_cache": False} if "use_cache" in kwargs else {})
            return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    layer.forward = forward
    layer._polymodal_checkpointed = True  # type: ignore[assignment]


def enable_activation_checkpointing(model: nn.Module, use_hf: bool = True) -> int:
    """Recompute every decoder layer's activations in backward instead of keeping them. Inside a transformers
    ``PreTrainedModel``: its own ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before
    transformers 5), non-reentrant; other decoder layers (or all, ``use_hf=False``): ``torch.utils.checkpoint``
    around their forward. Returns the number of layers checkpointed; ConfigError when there is none."""
    covered: set[int] = set()
    count = 0
    if use_hf:
        for hf in _outermost(model, lambda _, m: _is_hf_pretrained(m) and bool(
                getattr(m, "supports_gradient_checkpointing", False))):
            kwargs = {"use_reentrant": False}
            names = ("activation_checkpointing_enable", "gradient_checkpointing_enable")  # transformers 5, 4
            new, old = (getattr(hf, n, None) for n in names)
            if callable(new):
                new(activation_checkpointing_kwargs=kwargs)
            elif callable(old):
                old(gradient_checkpointing_kwargs=kwargs)
            covered.update(id(m) for m in hf.modules())
            count += sum(1 for m in hf.modules() if getattr(m, "gradient_checkpointing", False) is True
                         and "GradientCheckpointingLayer" in _class_names(m))
    for layer in decoder_layers(model):
        if id(layer) not in covered:
            _checkpoint_forward(layer)
            count += 1
    if not count:
        raise ConfigError("train.activation_checkpointing: the model has no transformer layers to checkpoint",
                          field="train.activation_checkpointing")
    return count


# ------------------------------------------------------------------------------------------ DTensor helpers

def _is_dtensor(t: Any) -> bool:
    """Without importing torch.distributed.tensor (slow) when nothing created a DTensor."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined]
    return out


def _nbytes(t: torch.Tensor) -> int:
    local = _local(t)
    return local.numel() * local.element_size()


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm over all gradients, scaled by ``max_norm / (norm + 1e-6)``
    when above) that also takes DTensor gradients, alone or mixed with plain ones (tensor parallel): shards'
    squares are summed over their mesh, replicated gradients counted once."""
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not any(_is_dtensor(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    device = _local(grads[0]).device
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    sharded: dict[Any, torch.Tensor] = {}
    for g in grads:
        if not _is_dtensor(g):
            replicated += g.detach().float().pow(2).sum()
            continue
        d: Any = g
        placements, mesh = d.placements, d.device_mesh
        if all(p.is_replicate() for p in placements):
            replicated += d.to_local().detach().float().pow(2).sum()
        elif all(p.is_replicate() or p.is_shard() for p in placements) and mesh.ndim == 1:
            sq = d.to_local().detach().float().pow(2).sum()
            sharded[mesh] = sharded[mesh] + sq if mesh in sharded else sq
        else:  # partial sums or several mesh dimensions: the plain way
            replicated += d.full_tensor().detach().float().pow(2).sum()
    total = replicated
    for mesh, sq in sharded.items():
        dist.all_reduce(sq, group=mesh.get_group())
        total = total + sq
    norm = total.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        _local(g).mul_(coef.to(_local(g).dtype))
    return norm


# ------------------------------------------------------------------------------------------------ memory

@dataclass(frozen=True)
class RankMemory:
    """Bytes held by one rank: parameters, gradients, optimizer state (local shards of DTensors; transient
    all-gather buffers, DDP's gradient buckets and activations not counted)."""

    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer

    def to_log(self) -> dict[str, int]:
        return {"memory/params_bytes": self.params, "memory/grads_bytes": self.grads,
                "memory/optimizer_bytes": self.optimizer, "memory/total_bytes": self.total}


def rank_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, planned: bool = False
                ) -> RankMemory:
    """What this rank holds for ``model`` (tied parameters once) and ``optimizer``. ``planned``: gradients and
    optimizer state as they will be once allocated (a gradient per trainable parameter, two moments each — AdamW
    in the parameter's dtype, LAMB in fp32 for half parameters — plus a 4-byte step), instead of what exists now
    (before the first step: nothing). After a step the two agree (tested)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    p_bytes = sum(_nbytes(p) for p in params)
    if planned:
        g_bytes = sum(_nbytes(p) for p in trainable)
        o_bytes = 0
        if optimizer is not None:
            fp32 = type(optimizer).__name__ == "Lamb"
            for p in (q for group in optimizer.param_groups for q in group["params"]):
                size = 4 if fp32 and p.dtype in (torch.float16, torch.bfloat16) else _local(p).element_size()
                o_bytes += 2 * _local(p).numel() * size + 4
        return RankMemory(p_bytes, g_bytes, o_bytes)
    g_bytes = sum(_nbytes(p.grad) for p in trainable if p.grad is not None)
    o_bytes = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            o_bytes += sum(_nbytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    return RankMemory(p_bytes, g_bytes, o_bytes)


# ------------------------------------------------------------------------------------------------ sharding

def fsdp(model: nn.Module, mesh: Any) -> int:
    """FSDP2 ``fully_shard`` on each decoder layer, then on ``model`` (the rest: embeddings, norms, heads).
    Returns the number of layers sharded on their own."""
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(layers)


def tensor_parallel(model: nn.Module, mesh: Any) -> int:
    """``parallelize_module`` with the plan of `tp_layers` on each Llama-style layer; returns their number."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    layers = tp_layers(model, mesh.size())
    for layer, plan in layers:
        styles = {k: ColwiseParallel() if v == "colwise" else RowwiseParallel() for k, v in plan.items()}
        parallelize_module(layer, mesh, styles)  # type: ignore[arg-type]
    return len(layers)


@dataclass(frozen=True)
class Parallel:
    """How this run's processes share the model (see the module doc). ``strategy`` is "none" in one process."""

    strategy: str
    world: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    activation_checkpointing: bool = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, env: DistEnv) -> Parallel:
        strategy = cfg.parallel if env.distributed else "none"
        if strategy in ("fsdp", "tp") and cfg.optimizer == "lamb":  # float() of a DTensor norm is this shard's
            raise ConfigError(f"LAMB's trust ratio needs whole-tensor norms, which it does not take of sharded "
                              f"parameters yet: use adamw with train.parallel {strategy} (or ddp)",
                              field="train.optimizer")
        return cls(strategy, env.world, env.rank, env.device, cfg.activation_checkpointing)

    @property
    def sharded(self) -> bool:
        """Parameters are DTensors: forward passes are collective (every rank validates; state is gathered)."""
        return self.strategy in ("fsdp", "tp")

    @property
    def data_world(self) -> int:
        """Processes that split each global batch: all of them, but 1 under tensor parallel."""
        return 1 if self.strategy == "tp" else self.world

    @property
    def data_rank(self) -> int:
        return 0 if self.strategy == "tp" else self.rank

    def apply(self, model: nn.Module) -> None:
        """Activation checkpointing (when asked), then the sharding of ``strategy``; before the optimizer is
        built (it must see the shards)."""
        if self.sharded and hasattr(model, "features") and hasattr(model, "loss_from_features"):
            raise ConfigError(f"train.parallel {self.strategy} is for models trained through forward() (lm, "
                              "multimodal LMs); alignment models use ddp", field="train.parallel")
        if self.activation_checkpointing:
            enable_activation_checkpointing(model)
        if not self.sharded:
            return
        if self.strategy == "tp":
            tp_layers(model, self.world)  # its ConfigError before any collective
        elif not decoder_layers(model):
            raise ConfigError("train.parallel fsdp shards transformer layers; this model has none (use ddp)",
                              field="train.parallel")
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(self.device.type, (self.world,))
        (tensor_parallel if self.strategy == "tp" else fsdp)(model, mesh)

    def clip_grad_norm(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        return clip_grad_norm(params, max_norm)

    # ---------------------------------------------------------------- checkpoints: full tensors in, full out
    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict on rank 0 (on the CPU when sharded), {} elsewhere. Collective when sharded."""
        if not self.sharded:
            return dict(model.state_dict()) if self.rank == 0 else {}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v for k, v in full.items() if isinstance(v, torch.Tensor)} if self.rank == 0 else {}

    def optimizer_state(self, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """`checkpoint.flatten_optimizer` with DTensor states gathered to full tensors (collective when sharded;
        every rank must call it)."""
        tensors, meta = ck.flatten_optimizer(opt)
        if self.sharded:
            tensors = {k: (v.full_tensor().cpu() if _is_dtensor(v) else v)  # type: ignore[attr-defined]
                       for k, v in sorted(tensors.items())}
        return tensors, meta

    def load_model_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load a full state dict (every rank has it) into ``model``, sharded or not."""
        if not self.sharded:
            model.load_state_dict(state, strict=True)
            return
        from torch.distributed.tensor import distribute_tensor

        # each rank cuts its own shards from its full copy (no communication): a DTensor for a DTensor entry
        own = model.state_dict()
        local = {k: (distribute_tensor(v.to(_local(own[k]).device), own[k].device_mesh, own[k].placements,
                                       src_data_rank=None) if k in own and _is_dtensor(own[k]) else v)
                 for k, v in state.items()}
        model.load_state_dict(local, strict=True)

    def optimizer_tensors(self, opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
        """Full optimizer tensors (``optim.{index}.{name}``) cut to the shards of DTensor parameters, for
        `checkpoint.restore_optimizer`; others unchanged."""
        out = dict(tensors)
        if not self.sharded:
            return out
        from torch.distributed.tensor import distribute_tensor

        params = [p for group in opt.param_groups for p in group["params"]]
        for key, value in tensors.items():
            parts = key.split(".", 2)
            if len(parts) != 3 or parts[0] != "optim" or not parts[1].isdigit() or int(parts[1]) >= len(params):
                continue
            p = params[int(parts[1])]
            if _is_dtensor(p) and tuple(value.shape) == tuple(p.shape):
                out[key] = distribute_tensor(value.to(_local(p).device), p.device_mesh, p.placements,
                                             src_data_rank=None)
        return out

    def describe(self, memory: RankMemory) -> str:
        mb = 1 / 2**20
        return (f"{self.strategy} on {self.world} processes: {memory.total * mb:.2f} MiB per rank (parameters "
                f"{memory.params * mb:.2f}, gradients {memory.grads * mb:.2f}, optimizer {memory.optimizer * mb:.2f})")


__all__ = ["STRATEGIES", "Parallel", "RankMemory", "clip_grad_norm", "decoder_layers",
           "enable_activation_checkpointing", "fsdp", "rank_memory", "tensor_parallel", "tp_layers"]
