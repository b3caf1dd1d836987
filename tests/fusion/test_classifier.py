"""FusionClassifier: composition, training on a tiny synthetic 2-modality task, modality dropout."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from polymodal.data.sample import Batch
from polymodal.encoders.base import Encoder
from polymodal.errors import ConfigError, InvalidInput
from polymodal.fusion import create_fusion
from polymodal.models import build_model
from polymodal.models.classifier import FusionClassifier, drop_modalities
from polymodal.recipes import load_recipe

DIMS = {"audio": 4, "image": 6}


def synthetic(n: int = 96, seed: int = 0):
    """3 classes; each modality is a noisy view of the class (image a centroid, audio a different one)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    cent = {m: 2.0 * torch.randn(3, d, generator=g) for m, d in DIMS.items()}
    feats = {m: cent[m][y] + 0.8 * torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    return feats, y


def train(model: FusionClassifier, inputs, y, steps: int = 60, mask=None) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = last = 0.0
    for step in range(steps):
        loss = model.loss(inputs, y, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0:
            first = loss.item()
        last = loss.item()
    return first, last


@pytest.mark.parametrize("fusion", ["early", "late", "attention", "low_rank_tensor"])
def test_trains_on_precomputed_features(fusion):
    torch.manual_seed(0)
    feats, y = synthetic()
    cfg = {"num_classes": 3} if fusion == "late" else {}
    model = FusionClassifier({}, create_fusion(fusion, DIMS, **cfg), None, num_classes=3, modality_dropout=0.3)
    first, last = train(model, feats, y)
    assert last < 0.5 * first
    model.eval()
    with torch.no_grad():
        acc = (model(feats).argmax(1) == y).float().mean().item()
        one = {"audio": torch.zeros(len(y), dtype=torch.bool), "image": torch.ones(len(y), dtype=torch.bool)}
        acc_image_only = (model(feats, one).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    assert acc_image_only > 0.8  # modality dropout taught it to cope with a missing modality


class FlatEncoder(Encoder):
    """Test encoder: mean over the padded time axis (if any), then a linear map."""

    def __init__(self, modality: str, in_dim: int, out_dim: int):
        super().__init__()
        self.modality, self.output_dim = modality, out_dim
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, part):
        x = part["values"]
        if "pad_mask" in part:
            w = part["pad_mask"].unsqueeze(1).float()
            x = (x * w).sum(-1) / w.sum(-1).clamp_min(1)
        return self.lin(x.flatten(1))


def make_batch(feats, y) -> Batch:
    """Image as (B, 3, 1, 2) pixels, audio as (B, 4, T) frames with padding, plus an unused text."""
    n = len(y)
    audio = feats["audio"].unsqueeze(-1).repeat(1, 1, 3)
    pad = torch.ones(n, 3, dtype=torch.bool)
    pad[::2, 2] = False
    audio[::2, :, 2] = 99.0  # padding garbage the encoder must ignore
    mask = {"audio": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool),
            "text": torch.ones(n, dtype=torch.bool)}
    mask["audio"][5] = False
    data = {"audio": audio, "image": feats["image"].view(n, 3, 1, 2), "text": torch.zeros(n, 2, dtype=torch.long)}
    return Batch([f"s{i}" for i in range(n)], data, mask, {"audio": pad, "text": torch.ones(n, 2, dtype=torch.bool)},
                 [None] * n, [{"label": int(v)} for v in y])


def rows(b: Batch, idx: list[int]) -> Batch:
    return Batch([b.ids[i] for i in idx], {k: v[idx] for k, v in b.data.items()}, {k: v[idx] for k, v in b.mask.items()},
                 {k: v[idx] for k, v in b.pad_mask.items()}, [b.texts[i] for i in idx], [b.metadata[i] for i in idx])


def test_trains_from_a_batch_with_encoders_and_misa_aux_losses():
    # MISA's difference loss grows like (batch / hidden)^2 (see docs/fusion.md): train in MISA's regime,
    # mini-batches well below the hidden width.
    torch.manual_seed(1)
    feats, y = synthetic()
    enc = {"audio": FlatEncoder("audio", 4, 16), "image": FlatEncoder("image", 6, 16)}
    fusion = create_fusion("shared_private", {"audio": 16, "image": 16}, hidden=32)
    model = FusionClassifier(enc, fusion, None, num_classes=3)
    batch = make_batch(feats, y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.loss_terms(batch, y)
    for _ in range(4):
        for start in range(0, len(y), 16):
            idx = list(range(start, start + 16))
            loss = model.loss(rows(batch, idx), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        terms = model.loss_terms(batch, y)
    assert terms["loss"] < 0.5 * before["loss"]
    assert terms["task"] < 0.3
    assert set(terms) == {"loss", "task", "sim", "diff", "recon"}
    want = terms["task"] + 0.3 * terms["diff"] + terms["sim"] + terms["recon"]
    torch.testing.assert_close(terms["loss"], want)


def test_crossmodal_uses_optional_sequence_hook():
    class SeqEncoder(FlatEncoder):
        def forward_sequence(self, part):
            x = part["values"].transpose(1, 2)  # (B, T, C)
            return self.lin(x), part["pad_mask"]

    torch.manual_seed(0)
    feats, y = synthetic(8)
    enc = {"audio": SeqEncoder("audio", 4, 8), "image": FlatEncoder("image", 6, 8)}
    model = FusionClassifier(enc, create_fusion("crossmodal", {"audio": 8, "image": 8}, d_model=8, heads=2),
                             None, num_classes=3).eval()
    batch = make_batch(feats, y)
    with torch.no_grad():
        out = model(batch)
        batch.data["audio"][::2, :, 2] = -5.0  # padded frames: must not matter
        torch.testing.assert_close(model(batch), out)
    assert out.shape == (8, 3)


def test_head_rules():
    late = create_fusion("late", DIMS, num_classes=3)
    assert isinstance(FusionClassifier({}, late, None, num_classes=3).head, nn.Identity)
    with pytest.raises(ConfigError):
        FusionClassifier({}, late, nn.Linear(3, 3), num_classes=3)
    with pytest.raises(ConfigError):
        FusionClassifier({}, late, None, num_classes=4)
    early = create_fusion("early", DIMS)
    with pytest.raises(ConfigError):
        FusionClassifier({}, early, None)
    with pytest.raises(ConfigError, match="outputs"):
        FusionClassifier({"audio": FlatEncoder("audio", 4, 5)}, early, None, num_classes=2)
    model = FusionClassifier({}, early, None, num_classes=2)
    with pytest.raises(InvalidInput, match="video"):
        model({"video": torch.zeros(2, 3)})


def test_modality_dropout_never_drops_all_of_a_sample():
    mods = ("audio", "image", "text")
    g = torch.Generator().manual_seed(0)
    n = 4000
    mask = {m: torch.rand(n, generator=g) < 0.7 for m in mods}
    mask["text"][:10] = False
    mask["audio"][:5] = False
    mask["image"][:5] = False  # rows 0-4 have nothing: they must stay empty
    has = torch.stack([mask[m] for m in mods], 1)
    for p in (0.5, 0.9, 0.99):
        out = drop_modalities(mask, mods, p, n, generator=g)
        kept = torch.stack([out[m] for m in mods], 1)
        assert not torch.any(kept & ~has), "dropout may only remove modalities"
        assert torch.equal(kept.any(1), has.any(1)), "a sample with any modality keeps at least one"
    # two modalities, both present, p = 0.5: P(drop a given one) = p(1-p) + p^2/2 = 0.375
    both = {"audio": torch.ones(n, dtype=torch.bool), "image": torch.ones(n, dtype=torch.bool)}
    out = drop_modalities(both, ("audio", "image"), 0.5, n, generator=g)
    rate = 1 - out["audio"].float().mean().item()
    assert abs(rate - 0.375) < 0.03


def test_modality_dropout_only_in_training():
    torch.manual_seed(0)
    feats, _ = synthetic(64)
    model = FusionClassifier({}, create_fusion("early", DIMS), None, num_classes=3, modality_dropout=0.5)
    model.eval()
    with torch.no_grad():
        a, b = model(feats), model(feats)
        torch.testing.assert_close(a, b)
        model.train()
        c = model(feats)
    assert not torch.allclose(a, c)  # mask=None still gets masks (all present) that dropout can change


def test_modality_dropout_rate_matches_p_with_three_modalities():
    # every modality present: a modality is lost when dropped (p), unless all three were dropped (p^3)
    # and it is not the one kept at random (2/3 of those): p - p^3 / 3
    mods, n, p = ("audio", "image", "text"), 20000, 0.3
    g = torch.Generator().manual_seed(1)
    full = {m: torch.ones(n, dtype=torch.bool) for m in mods}
    out = drop_modalities(full, mods, p, n, generator=g)
    kept = torch.stack([out[m] for m in mods], 1)
    assert kept.any(1).all()
    for i in range(3):
        assert abs((1 - kept[:, i].float().mean().item()) - (p - p**3 / 3)) < 0.01
    # a sample with one modality never loses it
    one = {"audio": torch.ones(n, dtype=torch.bool), "image": torch.zeros(n, dtype=torch.bool)}
    assert drop_modalities(one, ("audio", "image"), 0.9, n, generator=g)["audio"].all()


class SpyEncoder(FlatEncoder):
    """Records the presence mask it was given."""

    def __init__(self, modality: str, in_dim: int, out_dim: int):
        super().__init__(modality, in_dim, out_dim)
        self.masks: list[torch.Tensor] = []

    def forward(self, part):
        self.masks.append(part["mask"].clone())
        return super().forward({k: v for k, v in part.items() if k != "pad_mask"})


def test_one_mask_per_forward_reaches_encoders_and_fusion():
    """After modality dropout the encoders and the fusion see the same mask: the training forward equals an
    eval forward given the mask the encoders saw."""
    torch.manual_seed(0)
    feats, y = synthetic(64)
    enc = {"audio": SpyEncoder("audio", 4, 4), "image": SpyEncoder("image", 6, 6)}
    model = FusionClassifier(enc, create_fusion("attention", DIMS, hidden=8), None, num_classes=3,
                             modality_dropout=0.5)
    inputs = {"audio": feats["audio"], "image": feats["image"]}
    model.train()
    with torch.no_grad():
        dropped = model(inputs)
        seen = {m: e.masks[-1] for m, e in enc.items()}
        assert not all(bool(v.all()) for v in seen.values())  # something was dropped...
        assert torch.stack(list(seen.values()), 1).any(1).all()  # ...never all of a sample
        model.eval()
        torch.testing.assert_close(model(inputs, seen), dropped)


def test_a_modality_without_a_mask_is_present_everywhere():
    feats, _ = synthetic(8)
    enc = {"audio": SpyEncoder("audio", 4, 4)}
    model = FusionClassifier(enc, create_fusion("early", DIMS), None, num_classes=3).eval()
    half = torch.arange(8) < 4
    with torch.no_grad():
        out = model(feats, {"image": half})  # audio has no mask entry: present in every row
        assert enc["audio"].masks[-1].all()
        ref = model(feats, {"image": half, "audio": torch.ones(8, dtype=torch.bool)})
    torch.testing.assert_close(out, ref)


TINY = {"arch": "fusion", "num_classes": 3, "fusion": {"name": "early"},
        "encoders": {"image": {"name": "image_cnn", "image_size": 16, "channels": [8, 16]}}}


@pytest.mark.parametrize(("change", "field"), [
    ({"modality_dropuot": 0.3}, "modality_dropuot"),
    ({"modality_dropout": 1.0}, "modality_dropout"),
    ({"modality_dropout": "high"}, "modality_dropout"),
    ({"fusion": {}}, "fusion"),
    ({"fusion": {"name": "nope"}}, "fusion.name"),
    ({"num_classes": 1}, "num_classes"),
    ({"classes": ["a", "a"]}, "classes"),
    ({"classes": ["a", "b"]}, "num_classes"),
    ({"label_field": ""}, "label_field"),
    ({"encoders": {}}, "encoders"),
    ({"init_from": "runs/clip"}, "init_from"),
    ({"init_from": {"freeze": True}}, "init_from.run"),
    ({"init_from": {"run": "r", "weights_in_checkpoint": True, "modalities": ["audio"]}}, "init_from"),
])
def test_fusion_config_errors_name_the_field(change, field):
    with pytest.raises(ConfigError) as info:
        build_model("fusion", {**TINY, **change})
    assert info.value.field == field


def test_model_config_is_the_resolved_recipe_section():
    recipe = load_recipe("fusion_late_shapes")
    model = build_model("fusion", recipe.model)
    # what run dirs hold: the recipe's keys plus every default the build relied on, written out (num_classes
    # resolved from classes), so a later change of a default cannot change how a saved run rebuilds
    assert model.config == {"arch": "fusion", "init_from": None, **recipe.model, "num_classes": 8}
    json.dumps(model.config)  # plain JSON
    assert model.classifier.modality_dropout == 0.3 and model.num_classes == 8
    again = build_model("fusion", model.config)  # a run dir's config rebuilds the same model
    assert again.config == model.config
