"""One contract, run over every registered fusion: shapes, finiteness, gradients to every parameter,
masking (a masked modality cannot influence its row), and rows missing different modalities or all."""

from __future__ import annotations

import itertools

import pytest
import torch

from polymodal.errors import InvalidInput, NotFound
from polymodal.fusion import FUSIONS, create_fusion

DIMS = {"audio": 6, "image": 5, "text": 4}
# Small configs; a newly registered fusion is tested with its defaults (only late needs an argument).
CFG: dict[str, dict] = {
    "late": {"num_classes": 3, "weighting": "learned"},
    "attention": {"hidden": 8},
    "tensor": {"out_dim": 8},
    "low_rank_tensor": {"out_dim": 8, "rank": 3},
    "crossmodal": {"d_model": 8, "heads": 2},
    "shared_private": {"hidden": 8},
}
NAMES = FUSIONS.names()


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_fusion(name, DIMS, **CFG.get(name, {}))


def features(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g) for m, d in DIMS.items()}


def mixed_mask() -> dict[str, torch.Tensor]:
    """Rows: 0-1 complete; 2..4 each lack a different modality; 5 lacks all; 6 has only image."""
    mods = sorted(DIMS)
    rows = [set(mods), set(mods)] + [set(mods) - {m} for m in mods] + [set(), {"image"}]
    return {m: torch.tensor([m in r for r in rows]) for m in mods}


def grads(fusion, feats, mask) -> dict[str, torch.Tensor | None]:
    fusion.zero_grad(set_to_none=True)
    out = fusion(feats, mask)
    # a random projection, so no gradient cancels by symmetry (a plain sum would for softmax-like maps)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    loss = (out * w).sum()
    aux = fusion.aux_loss()
    if aux is not None:
        loss = loss + aux
    loss.backward()
    return {n: p.grad for n, p in fusion.named_parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_finite(name):
    f = make(name)
    feats = features(5)
    out = f(feats, {m: torch.ones(5, dtype=torch.bool) for m in DIMS})
    assert out.shape == (5, f.out_dim)
    assert torch.isfinite(out).all()
    # mask=None means every given feature is present
    torch.testing.assert_close(f(feats, None), out)


def zero_by_definition(name: str) -> set[str]:
    """Parameters whose gradient is exactly zero for vector (length-1) features: attention over a single key
    gives it weight 1 whatever the query, so crossmodal's query LayerNorm gets no gradient. (Older torch
    kernels returned float noise here; a test must not rely on it.) The sequence test covers them."""
    if name != "crossmodal":
        return set()
    return {n for n, _ in make(name).named_parameters() if ".ln_q." in n}


@pytest.mark.parametrize("name", NAMES)
def test_gradients_all_present(name):
    f = make(name)
    g = grads(f, features(6), None)
    exempt = f.missing_only_parameters() | zero_by_definition(name)
    assert exempt <= set(g), "missing_only_parameters names unknown parameters"
    no_grad = [n for n, v in g.items() if n not in exempt and (v is None or not torch.any(v != 0))]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_mixed_batch_reach_every_parameter(name):
    f = make(name)
    g = grads(f, features(7), mixed_mask())
    exempt = zero_by_definition(name)
    no_grad = [n for n, v in g.items() if n not in exempt and (v is None or not torch.any(v != 0))]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(v).all() for v in g.values() if v is not None)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_batch_is_finite_and_masked_values_have_no_influence(name):
    f = make(name).eval()
    mask = mixed_mask()
    feats = features(7)
    with torch.no_grad():
        out = f(feats, mask)
        assert out.shape == (7, f.out_dim) and torch.isfinite(out).all()
        # perturb every masked entry wildly (incl. NaN/inf): no row may change
        bad = {m: torch.where(mask[m].unsqueeze(-1), x, torch.full_like(x, float("nan"))) for m, x in feats.items()}
        bad["audio"][~mask["audio"]] = 1e6
        bad["text"][~mask["text"]] = float("inf")
        torch.testing.assert_close(f(bad, mask), out)
        # perturbing a present value does change that row (so the check above can fail)
        moved = {m: x.clone() for m, x in feats.items()}
        moved["image"][6] += 3.0
        changed = f(moved, mask)
        assert not torch.allclose(changed[6], out[6])


@pytest.mark.parametrize("name", NAMES)
def test_absent_key_equals_all_masked(name):
    f = make(name).eval()
    feats = features(4)
    mask = {m: torch.ones(4, dtype=torch.bool) for m in DIMS}
    mask["image"][:] = False
    with torch.no_grad():
        full = f(feats, mask)
        dropped = f({m: x for m, x in feats.items() if m != "image"}, {m: v for m, v in mask.items() if m != "image"})
        nothing = f({}, {"audio": torch.zeros(4, dtype=torch.bool)})
        all_masked = f(feats, {m: torch.zeros(4, dtype=torch.bool) for m in DIMS})
    torch.testing.assert_close(dropped, full)
    torch.testing.assert_close(nothing, all_masked)
    assert torch.isfinite(nothing).all()
    # every all-missing row gets the same learned output
    torch.testing.assert_close(nothing, nothing[:1].expand_as(nothing))


@pytest.mark.parametrize("name", NAMES)
def test_key_order_does_not_matter(name):
    f = make(name).eval()
    feats = features(3)
    mask = mixed_mask()
    mask = {m: v[:3] for m, v in mask.items()}
    for perm in itertools.permutations(sorted(DIMS)):
        shuffled = {m: feats[m] for m in perm}
        torch.testing.assert_close(f(shuffled, {m: mask[m] for m in reversed(perm)}), f(feats, mask))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip(name):
    f = make(name, seed=0).eval()
    g = make(name, seed=123).eval()
    g.load_state_dict(f.state_dict())
    feats, mask = features(7), mixed_mask()
    torch.testing.assert_close(g(feats, mask), f(feats, mask))


def test_errors():
    with pytest.raises(NotFound):
        create_fusion("nope", DIMS)
    f = make("early")
    with pytest.raises(InvalidInput, match="unknown modality"):
        f({"video": torch.zeros(2, 3)}, None)
    with pytest.raises(InvalidInput, match="image"):
        f({"image": torch.zeros(2, 99)}, None)
    with pytest.raises(InvalidInput, match="batch size"):
        f({"image": torch.zeros(2, 5), "text": torch.zeros(3, 4)}, None)


# ----------------------------------------------------------------- per-fusion checks against references

def test_late_mean_is_average_of_present_heads():
    f = create_fusion("late", DIMS, num_classes=3).eval()
    feats, mask = features(7), mixed_mask()
    with torch.no_grad():
        out = f(feats, mask)
        per = {m: f.heads[m](feats[m]) for m in DIMS}
    for row in range(7):
        have = [m for m in sorted(DIMS) if mask[m][row]]
        want = torch.stack([per[m][row] for m in have]).mean(0) if have else f.none_logits.detach()
        torch.testing.assert_close(out[row], want)
    assert f.produces_logits and f.out_dim == 3


def test_late_learned_weights_renormalise_over_present():
    f = create_fusion("late", DIMS, num_classes=3, weighting="learned").eval()
    with torch.no_grad():
        f.scores.copy_(torch.tensor([0.0, 1.0, 2.0]))  # audio, image, text
        feats, mask = features(7), mixed_mask()
        out = f(feats, mask)
        per = {m: f.heads[m](feats[m]) for m in DIMS}
    row = 2  # lacks audio: weights e^1, e^2 renormalised
    w = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    torch.testing.assert_close(out[row], w[0] * per["image"][row] + w[1] * per["text"][row])


def test_attention_single_present_modality_gets_all_weight():
    f = create_fusion("attention", DIMS, hidden=8).eval()
    feats, mask = features(7), mixed_mask()
    with torch.no_grad():
        out = f(feats, mask)
        torch.testing.assert_close(out[6], f.proj["image"](feats["image"][6]))  # row 6 has only image
        # complete row: softmax over all three
        h = torch.stack([f.proj[m](feats[m][0]) for m in sorted(DIMS)])
        a = torch.softmax(f.score(h).squeeze(-1), 0)
        torch.testing.assert_close(out[0], (a.unsqueeze(-1) * h).sum(0))


def _explicit_tfn_tensor(feats, mask, row):
    """Slow reference: [x;1] (or [0;1] when missing), explicit outer product via einsum, flattened."""
    zs = []
    for m in sorted(DIMS):
        x = feats[m][row] if mask[m][row] else torch.zeros(DIMS[m])
        zs.append(torch.cat([x, torch.ones(1)]))
    return torch.einsum("i,j,k->ijk", *zs).reshape(-1)


def test_tensor_fusion_matches_explicit_outer_product():
    f = create_fusion("tensor", DIMS, out_dim=4).eval()
    feats, mask = features(7), mixed_mask()
    with torch.no_grad():
        out = f(feats, mask)
        for row in range(7):
            torch.testing.assert_close(out[row], f.post(_explicit_tfn_tensor(feats, mask, row)))
        # the all-missing row is the learned column of the 1 (x) 1 (x) 1 term plus bias
        torch.testing.assert_close(out[5], f.post.weight[:, -1] + f.post.bias)


def test_low_rank_equals_tensor_fusion_with_the_factorised_weight():
    f = create_fusion("low_rank_tensor", DIMS, out_dim=4, rank=3).eval()
    feats, mask = features(7), mixed_mask()
    with torch.no_grad():
        out = f(feats, mask)
        wa, wi, wt = (f.factors[m] for m in sorted(DIMS))  # (rank, D+1, out)
        full = torch.einsum("r,rio,rjo,rko->ijko", f.fusion_weights[0], wa, wi, wt).reshape(-1, 4)
        for row in range(7):
            torch.testing.assert_close(out[row], _explicit_tfn_tensor(feats, mask, row) @ full + f.bias)


def test_low_rank_factors_are_trained_and_saved():
    f = create_fusion("low_rank_tensor", DIMS, out_dim=4, rank=3)
    sd = f.state_dict()
    for m in DIMS:
        assert f"factors.{m}" in sd and sd[f"factors.{m}"].shape == (3, DIMS[m] + 1, 4)
    assert "fusion_weights" in sd and "bias" in sd
    assert {n for n, _ in f.named_parameters()} == set(sd)
    g = grads(f, features(5), None)
    assert all(v is not None and torch.any(v != 0) for v in g.values())
    before = {n: p.detach().clone() for n, p in f.named_parameters()}
    torch.optim.SGD(f.parameters(), lr=0.1).step()
    assert all(not torch.equal(before[n], p) for n, p in f.named_parameters())


def _seq_inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    lens = {"audio": 5, "image": 1, "text": 4}
    feats = {m: torch.randn(4, lens[m], DIMS[m], generator=g) for m in DIMS}
    pad = {m: torch.ones(4, lens[m], dtype=torch.bool) for m in DIMS}
    pad["audio"][1, 3:] = False
    pad["text"][2, 1:] = False
    pad["text"][3, :] = False  # a row whose text has no real position counts as missing text
    mask = {m: torch.ones(4, dtype=torch.bool) for m in DIMS}
    mask["image"][0] = False
    return feats, pad, mask


def test_crossmodal_sequences_padding_is_ignored():
    f = create_fusion("crossmodal", DIMS, d_model=8, heads=2).eval()
    feats, pad, mask = _seq_inputs()
    with torch.no_grad():
        out = f(feats, mask, pad_mask=pad)
        assert out.shape == (4, f.out_dim) and torch.isfinite(out).all()
        bad = {m: torch.where(pad[m].unsqueeze(-1), x, torch.full_like(x, 1e4)) for m, x in feats.items()}
        torch.testing.assert_close(f(bad, mask, pad_mask=pad), out)
        # text with no real position == text masked in that row
        mask2 = {m: v.clone() for m, v in mask.items()}
        mask2["text"][3] = False
        torch.testing.assert_close(f(feats, mask2, pad_mask=pad)[3], out[3])
        # a padded sequence gives the same output as its unpadded prefix alone
        short = {m: x[1:2] for m, x in feats.items()}
        short["audio"] = short["audio"][:, :3]
        alone = f(short, {m: v[1:2] for m, v in mask.items()})
        torch.testing.assert_close(alone[0], out[1], atol=1e-5, rtol=1e-5)


def test_crossmodal_vectors_are_length_one_sequences():
    f = create_fusion("crossmodal", DIMS, d_model=8, heads=2).eval()
    feats, mask = features(7), mixed_mask()
    with torch.no_grad():
        torch.testing.assert_close(f(feats, mask), f({m: x.unsqueeze(1) for m, x in feats.items()}, mask))


def test_crossmodal_query_key_projections_train_on_sequences():
    f = create_fusion("crossmodal", DIMS, d_model=8, heads=2)
    feats, pad, mask = _seq_inputs()
    f(feats, mask, pad_mask=pad).square().sum().backward()
    lens = {m: x.shape[1] for m, x in feats.items()}
    checked = 0
    for name, p in f.named_parameters():
        source = name.split(".")[1].split("_to_")[0] if name.startswith("cross.") else None
        # a single-key source (image: length 1) gives q/k no gradient by definition (softmax over one key)
        if source is None or lens[source] == 1:
            continue
        if name.endswith("attn.in_proj_weight"):  # rows: queries | keys | values
            for part in p.grad.chunk(3, dim=0):
                assert torch.any(part != 0), name
            checked += 1
        if ".ln_q." in name:
            assert torch.any(p.grad != 0), name
    assert checked == 4  # audio and text as sources, each into two targets



@pytest.mark.parametrize("name", ["tensor", "low_rank_tensor"])
def test_projected_tensor_fusions_handle_missing_rows(name):
    torch.manual_seed(0)
    f = create_fusion(name, DIMS, out_dim=8, proj_dim=3).eval()
    mask = mixed_mask()
    feats = features(7)
    with torch.no_grad():
        out = f(feats, mask)
        assert out.shape == (7, 8) and torch.isfinite(out).all()
        bad = {m: torch.where(mask[m].unsqueeze(-1), x, torch.full_like(x, 1e6)) for m, x in feats.items()}
        torch.testing.assert_close(f(bad, mask), out)
