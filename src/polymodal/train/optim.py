"""Optimizers: AdamW (torch) and LAMB (ours), with weight-decay exclusions.

No weight decay (OpenCLIP's rule, plus embeddings): every tensor with fewer than 2 dims (biases, norm
scales, the temperature ``logit_scale`` and SigLIP's ``logit_bias``), every parameter of a norm layer,
token embeddings, positional embeddings and class tokens. Decaying those only pulls them toward 0 for
no regularisation benefit. Frozen parameters (``requires_grad=False``, e.g. a locked LiT tower) are left
out of the optimizer altogether.

LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2) is implemented here: the
maintained library that has it (``pytorch-optimizer``) is not a dependency, and the rule is a few lines.
Per parameter tensor ``x`` with gradient ``g`` at step ``t``::

    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u = r + wd x
    trust = ||x|| / ||u||   (1 when either norm is 0; clipped to ``max_trust`` when given)
    x = x - lr * trust * u

As in the reference TF implementation, groups without weight decay also skip the layer adaptation
(``adapt=False``: trust = 1), so biases and norm scales take plain Adam steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm, nn.Embedding)
_NO_DECAY_NAMES = ("logit_scale", "logit_bias", "pos_emb", "position_embedding", "cls", "class_embedding")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters that get no weight decay (see the module doc)."""
    out: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORMS):
            out.update(f"{mod_name}.{n}" if mod_name else n for n, _ in module.named_parameters(recurse=False))
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim < 2 or leaf in _NO_DECAY_NAMES or leaf.endswith("_token"):
            out.add(name)
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups (decay, no decay) of trainable parameters; each group lists its parameter names."""
    skip = no_decay_names(model)
    decay: list[tuple[str, nn.Parameter]] = []
    plain: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if name in skip else decay).append((name, p))
    groups = []
    for items, wd, adapt in ((decay, weight_decay, True), (plain, 0.0, False)):
        if items:
            groups.append({"params": [p for _, p in items], "names": [n for n, _ in items],
                           "weight_decay": wd, "adapt": adapt})
    if not groups:
        raise ConfigError("the model has no trainable parameters (are all towers locked?)", field="model.locked")
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: Iterable[float] = (0.9, 0.98), eps: float = 1e-6) -> torch.optim.Optimizer:
    b1, b2 = (float(b) for b in betas)
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=(b1, b2), eps=eps)
    raise ConfigError(f"unknown optimizer {name!r} (known: adamw, lamb)", field="train.optimizer")


class Lamb(torch.optim.Optimizer):
    """LAMB with bias correction and decoupled weight decay inside the trust ratio (module doc)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, adapt: bool = True,
                 max_trust: float | None = None):
        if lr <= 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"invalid LAMB settings lr={lr} betas={betas} eps={eps}", field="train.lr")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "adapt": adapt,
                    "max_trust": max_trust}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("LAMB does not support sparse gradients", field="train.optimizer")
                self._update(p, group, b1, b2)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any], b1: float, b2: float) -> None:
        state = self.state[p]
        assert p.grad is not None  # step() skips parameters without a gradient
        # moments in fp32 for half-precision parameters, else in the parameter's own dtype
        dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        g, w = p.grad.to(dtype), p.to(dtype)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
        if group["weight_decay"]:
            update = update.add(w, alpha=group["weight_decay"])
        trust = 1.0
        if group["adapt"]:
            w_norm, u_norm = float(w.norm()), float(update.norm())
            trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            if group["max_trust"] is not None:
                trust = min(trust, group["max_trust"])
        p.add_(update.to(p.dtype), alpha=-group["lr"] * trust)
