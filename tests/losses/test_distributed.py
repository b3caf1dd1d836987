"""Two gloo processes, each with part of a fixed batch: the mean of their local losses and their
DDP-averaged gradients equal the single-process loss and gradients on the whole batch.

Cases: two linear towers with CLIP and SigLIP, equal (4+4) and unequal (5+3) splits, and the
AlignmentModel with missing modalities (one rank holds no audio at all) and a locked tower, and the
AlignmentModel under DDP (find_unused_parameters) where the tower a rank lacks changes from step to step.
All processes are spawned once (module fixture); float64 so the comparison can be tight.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from polymodal.data.sample import Batch
from polymodal.encoders.base import Encoder
from polymodal.losses.contrastive import clip_loss, clip_loss_gathered, siglip_loss, siglip_loss_gathered
from polymodal.losses.distributed import gather_with_grad
from polymodal.models.alignment import AlignmentModel

WORLD, N, D_IN = 2, 8, 6
TOWER_CASES = [("clip", (4, 4)), ("siglip", (4, 4)), ("clip", (5, 3)), ("siglip", (5, 3))]
MODEL_CASES = [("clip", "all", ()), ("siglip", "anchor", ("text",))]
CASES = [f"towers-{loss}-{a}+{b}" for loss, (a, b) in TOWER_CASES] + \
        [f"model-{loss}-{pairing}" for loss, pairing, _ in MODEL_CASES]


# ----------------------------------------------------------------------------------------- the problems
def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(N, D_IN, generator=g, dtype=torch.float64) for m in ("audio", "image", "text")}


def _towers() -> nn.ModuleDict:
    torch.manual_seed(1)
    return nn.ModuleDict({"a": nn.Linear(D_IN, 4), "b": nn.Linear(D_IN, 4)}).double()


def _tower_loss(towers: nn.ModuleDict, loss: str, rows: slice, gather: bool) -> torch.Tensor:
    x = _data()
    a = F.normalize(towers["a"](x["image"][rows]), dim=-1)
    b = F.normalize(towers["b"](x["text"][rows]), dim=-1)
    if loss == "clip":
        return (clip_loss_gathered if gather else clip_loss)(a, b, 5.0)
    return (siglip_loss_gathered if gather else siglip_loss)(a, b, 5.0, -2.0)


class LinearEncoder(Encoder):
    def __init__(self, modality: str, out: int = 5):
        super().__init__()
        self.modality, self.output_dim = modality, out
        self.lin = nn.Linear(D_IN, out)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.lin(part["values"]) * part["mask"][:, None]


# Presence of (audio, image, text) per row: rows 5..7 (rank 1 of the 5+3 split) have no audio.
PRESENT = {"audio": [1, 1, 0, 1, 1, 0, 0, 0], "image": [1, 1, 1, 0, 1, 1, 1, 1], "text": [1, 0, 1, 1, 1, 1, 1, 1]}


def _model(loss: str, pairing: str, locked: tuple[str, ...]) -> AlignmentModel:
    torch.manual_seed(2)
    encoders = {m: LinearEncoder(m) for m in ("audio", "image", "text")}
    anchor = "image" if pairing == "anchor" else None
    return AlignmentModel(encoders, dim=4, loss=loss, pairing=pairing, anchor=anchor, locked=locked).double()


def _batch(rows: slice, present: dict[str, list[int]] = PRESENT, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(N, D_IN, generator=g, dtype=torch.float64) for m in sorted(present)}
    data, mask = {}, {}
    for m, flags in present.items():
        present = torch.tensor(flags, dtype=torch.bool)[rows]
        if present.any():  # like collate: a modality no sample has is absent from data
            data[m], mask[m] = x[m][rows] * present[:, None], present
    ids = [f"s{i}" for i in range(N)][rows]
    return Batch(ids, data, mask, {}, [None] * len(ids), [{}] * len(ids))


def _run(case: str, rows: slice, gather: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one case on ``rows`` (gather: the distributed local loss)."""
    kind, loss, rest = case.split("-", 2)
    if kind == "towers":
        module: nn.Module = _towers()
        value = _tower_loss(module, loss, rows, gather)
    else:
        cfg = next(c for c in MODEL_CASES if c[0] == loss and c[1] == rest)
        module = _model(*cfg)
        value, _ = module(_batch(rows), gather=gather)
    value.backward()
    # A rank without some modality leaves that tower's gradient empty: it contributes zeros (as DDP does
    # with find_unused_parameters), and every rank all-reduces the same list of tensors.
    grads = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for k, p in module.named_parameters() if p.requires_grad}
    return float(value.detach()), grads


# DDP: in step `it`, rank it % 2 has no audio and the other rank no video, so which tower is unused (and
# which gradient bucket DDP finds ready first) differs between the ranks and changes from step to step.
def _ddp_present(it: int) -> dict[str, list[int]]:
    none = [0, 0, 0, 0]
    even = it % 2 == 0
    return {"audio": none + [1, 0, 1, 1] if even else [1, 1, 0, 1] + none,
            "image": [1, 1, 1, 0, 1, 1, 1, 1], "text": [1, 0, 1, 1, 1, 1, 0, 1],
            "video": [1, 1, 1, 1] + none if even else none + [1, 0, 1, 1]}


def _ddp_model() -> AlignmentModel:
    torch.manual_seed(3)
    return AlignmentModel({m: LinearEncoder(m) for m in ("audio", "image", "text", "video")}, dim=4).double()


def _ddp_steps(rank: int) -> list[tuple[float, dict[str, torch.Tensor]]]:
    model = _ddp_model()
    # A tiny bucket cap puts every tensor in its own bucket, so bucket readiness order matters.
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, bucket_cap_mb=1e-6)
    rows = slice(0, 4) if rank == 0 else slice(4, 8)
    out = []
    for it in range(3):
        loss, _ = ddp(_batch(rows, _ddp_present(it), seed=it), gather=True)
        loss.backward()  # DDP averages the gradients over the ranks
        out.append((float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()
                                           if p.grad is not None}))
        model.zero_grad(set_to_none=True)
    return out


def _split(case: str) -> tuple[int, int]:
    return (5, 3) if case.endswith("5+3") or case.startswith("model") else (4, 4)


# ----------------------------------------------------------------------------------------- processes
def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results: dict[str, Any] = {}
        for case in CASES:
            n0, n1 = _split(case)
            rows = slice(0, n0) if rank == 0 else slice(n0, n0 + n1)
            loss, grads = _run(case, rows, gather=True)
            for g in grads.values():  # what DDP does: average the gradients over ranks
                dist.all_reduce(g)
                g /= WORLD
            results[case] = (loss, grads)
        results["ddp"] = _ddp_steps(rank)
        # gather_with_grad itself: unequal sizes come back in rank order.
        x = torch.full((rank + 1, 2), float(rank))
        results["gathered"] = gather_with_grad(x)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("distributed workers did not finish in 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one(case: str, rank_results: list[dict[str, Any]]) -> None:
    ref_loss, ref_grads = _run(case, slice(0, N), gather=False)
    losses = [r[case][0] for r in rank_results]
    assert sum(losses) / WORLD == pytest.approx(ref_loss, abs=1e-9)
    for r in rank_results:
        grads = r[case][1]
        assert set(grads) == set(ref_grads)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0, msg=f"{case}: gradient of {name}")


def test_locked_tower_gets_no_gradient_in_distributed_run(rank_results: list[dict[str, Any]]) -> None:
    grads = rank_results[0]["model-siglip-anchor"][1]
    assert not any(k.startswith("encoders.text.") for k in grads)
    assert "encoders.audio.lin.weight" in grads and "logit_bias" in grads


def test_gather_with_grad_unequal_sizes(rank_results: list[dict[str, Any]]) -> None:
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    for r in rank_results:
        torch.testing.assert_close(r["gathered"], expected)


def test_ddp_with_rank_dependent_missing_modalities_matches_one_process(
        rank_results: list[dict[str, Any]]) -> None:
    for it in range(3):
        model = _ddp_model()
        loss, _ = model(_batch(slice(0, N), _ddp_present(it), seed=it))
        loss.backward()
        ref = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        assert sum(r["ddp"][it][0] for r in rank_results) / WORLD == pytest.approx(loss.item(), abs=1e-9)
        for r in rank_results:
            grads = r["ddp"][it][1]
            for name, g in ref.items():
                got = grads.get(name, torch.zeros_like(g))
                torch.testing.assert_close(got, g, atol=1e-6, rtol=0, msg=f"step {it}: gradient of {name}")
