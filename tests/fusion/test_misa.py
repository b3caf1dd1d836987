"""MISA losses against a direct computation written out plainly (numpy, float64, explicit loops)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from polymodal.fusion import create_fusion
from polymodal.losses import MISALoss, cmd, difference_loss, misa_losses, reconstruction_loss


def ref_cmd(x: np.ndarray, y: np.ndarray, k_max: int = 5) -> float:
    n, d = x.shape
    m = y.shape[0]
    mean_x = [sum(x[i, j] for i in range(n)) / n for j in range(d)]
    mean_y = [sum(y[i, j] for i in range(m)) / m for j in range(d)]
    total = np.sqrt(sum((mean_x[j] - mean_y[j]) ** 2 for j in range(d)))
    for k in range(2, k_max + 1):
        ck_x = [sum((x[i, j] - mean_x[j]) ** k for i in range(n)) / n for j in range(d)]
        ck_y = [sum((y[i, j] - mean_y[j]) ** k for i in range(m)) / m for j in range(d)]
        total += np.sqrt(sum((ck_x[j] - ck_y[j]) ** 2 for j in range(d)))
    return float(total)


def ref_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    a = np.stack([r / (np.sqrt((r ** 2).sum()) + 1e-6) for r in a])
    b = np.stack([r / (np.sqrt((r ** 2).sum()) + 1e-6) for r in b])
    corr = np.zeros((a.shape[1], b.shape[1]))
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            corr[i, j] = sum(a[r, i] * b[r, j] for r in range(a.shape[0]))
    return float((corr ** 2).mean())


def ref_mse(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x - y) ** 2).sum() / x.size)


def t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)


def test_cmd_matches_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.gamma(2.0, size=(9, 3))
    assert cmd(t64(x), t64(y)).item() == pytest.approx(ref_cmd(x, y), rel=1e-10)
    assert cmd(t64(x), t64(x)).item() == pytest.approx(0.0, abs=1e-12)
    assert cmd(t64(x), t64(y), n_moments=2).item() == pytest.approx(ref_cmd(x, y, 2), rel=1e-10)


def test_difference_and_reconstruction_match_reference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 5))
    assert difference_loss(t64(a), t64(b)).item() == pytest.approx(ref_diff(a, b), rel=1e-9)
    assert reconstruction_loss(t64(a), t64(a + 0.5)).item() == pytest.approx(0.25)
    # orthogonal (after centring) representations have zero difference loss
    ortho_a = np.array([[1.0, 0], [-1, 0], [0, 0], [0, 0]])
    ortho_b = np.array([[0, 0.0], [0, 0], [0, 1], [0, -1]])
    assert difference_loss(t64(ortho_a), t64(ortho_b)).item() == pytest.approx(0.0, abs=1e-12)


def test_cmd_gradient_is_finite_when_moments_match():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    cmd(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all()


def _ref_misa(shared, private, recon, orig, present):
    mods = sorted(shared)
    sims, diff, recs = [], 0.0, []
    for m in mods:
        rows = present[m]
        if rows.sum() >= 2:
            diff += ref_diff(private[m][rows], shared[m][rows])
        if rows.any():
            recs.append(ref_mse(recon[m][rows], orig[m][rows]))
    for m1, m2 in itertools.combinations(mods, 2):
        rows = present[m1] & present[m2]
        if rows.sum() >= 2:
            sims.append(ref_cmd(shared[m1][rows], shared[m2][rows]))
            diff += ref_diff(private[m1][rows], private[m2][rows])
    return {"sim": float(np.mean(sims)), "diff": diff, "recon": float(np.mean(recs))}


def test_misa_losses_use_present_rows_only():
    rng = np.random.default_rng(2)
    mods = ["audio", "image", "text"]
    b, h = 8, 3
    shared = {m: rng.uniform(size=(b, h)) for m in mods}
    private = {m: rng.uniform(size=(b, h)) for m in mods}
    recon = {m: rng.normal(size=(b, h)) for m in mods}
    orig = {m: rng.normal(size=(b, h)) for m in mods}
    present = {m: rng.uniform(size=b) < 0.7 for m in mods}
    present["audio"][:3] = True
    present["image"][:3] = True
    got = misa_losses(*({m: t64(v) for m, v in d.items()} for d in (shared, private, recon, orig)),
                      {m: torch.from_numpy(v) for m, v in present.items()})
    want = _ref_misa(shared, private, recon, orig, present)
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-9), k
    total = MISALoss()(*({m: t64(v) for m, v in d.items()} for d in (shared, private, recon, orig)),
                       {m: torch.from_numpy(v) for m, v in present.items()})
    assert total.item() == pytest.approx(0.3 * want["diff"] + want["sim"] + want["recon"], rel=1e-9)


def test_shared_private_fusion_aux_losses_match_direct_computation():
    torch.manual_seed(0)
    dims = {"audio": 6, "image": 5}
    f = create_fusion("shared_private", dims, hidden=4).double()
    g = torch.Generator().manual_seed(3)
    feats = {m: torch.randn(7, d, generator=g, dtype=torch.float64) for m, d in dims.items()}
    mask = {"audio": torch.tensor([1, 1, 1, 1, 0, 0, 1], dtype=torch.bool),
            "image": torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)}
    f(feats, mask)
    got = f.aux_losses()
    with torch.no_grad():  # MISA written out: u = LN(ReLU(P x)), h_c = sig(W_c u), h_p = sig(W_p u)
        u = {m: f.project[m](feats[m]) for m in dims}
        hc = {m: torch.sigmoid(f.shared[0](u[m])) for m in dims}
        hp = {m: torch.sigmoid(f.private[m][0](u[m])) for m in dims}
        rec = {m: f.recon[m](hc[m] + hp[m]) for m in dims}
    as_np = [{m: v[m].numpy() for m in dims} for v in (hc, hp, rec, u)]
    want = _ref_misa(*as_np, {m: mask[m].numpy() for m in dims})
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-8), k
    assert f.aux_loss().item() == pytest.approx(0.3 * want["diff"] + want["sim"] + want["recon"], rel=1e-8)
    # a masked row's values cannot move the losses
    feats["audio"][4] = 1e3
    f(feats, mask)
    for k in want:
        assert f.aux_losses()[k].item() == pytest.approx(want[k], rel=1e-8), k


def test_shared_private_weights_are_configurable():
    f = create_fusion("shared_private", {"audio": 3, "image": 3}, hidden=4, diff_weight=0.0, sim_weight=2.0,
                      recon_weight=0.0)
    g = torch.Generator().manual_seed(0)
    f({"audio": torch.randn(5, 3, generator=g), "image": torch.randn(5, 3, generator=g)}, None)
    assert f.aux_loss().item() == pytest.approx(2.0 * f.aux_losses()["sim"].item(), rel=1e-6)
