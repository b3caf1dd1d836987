"""AlignmentModel: pairing over present rows against a per-pair reference, training with missing
modalities, temperature clamp, locked towers, embed_batch, micro-batch merging and the config builder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.collate import collate
from polymodal.data.sample import Batch
from polymodal.data.transforms import (
    AudioTransform,
    ByteTokenizer,
    ImageTransform,
    SampleTransform,
    VideoTransform,
)
from polymodal.encoders.base import Encoder
from polymodal.errors import ConfigError, InvalidInput
from polymodal.losses.contrastive import clip_loss, siglip_loss
from polymodal.models import AlignmentModel, build_alignment_model, merge_features

B = 12
N_MELS, IMG, CLASSES = 8, 16, 4


def _synthetic_batch(seed: int = 0) -> Batch:
    """Text, image and audio that all encode one of CLASSES latent classes; some rows lack a modality
    (row i lacks text if i % 4 == 1, image if i % 4 == 2, audio if i % 3 == 0)."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(B) % CLASSES
    protos_img = torch.randn(CLASSES, 3, IMG, IMG, generator=torch.Generator().manual_seed(99))
    protos_mel = torch.randn(CLASSES, N_MELS, 1, generator=torch.Generator().manual_seed(98))
    lengths = 3 + torch.arange(B) % 4
    text = torch.zeros(B, 6, dtype=torch.long)
    text_pm = torch.arange(6)[None] < lengths[:, None]
    text[text_pm] = (10 + cls[:, None].expand(B, 6) * 5 + torch.randint(0, 3, (B, 6), generator=g))[text_pm]
    frames = 4 + torch.arange(B) % 5
    audio_pm = torch.arange(8)[None] < frames[:, None]
    audio = (protos_mel[cls] + 0.3 * torch.randn(B, N_MELS, 8, generator=g)) * audio_pm[:, None]
    image = protos_img[cls] + 0.3 * torch.randn(B, 3, IMG, IMG, generator=g)
    idx = torch.arange(B)
    mask = {"text": idx % 4 != 1, "image": idx % 4 != 2, "audio": idx % 3 != 0}
    data = {"text": text, "image": image, "audio": audio}
    data = {m: v * mask[m].view(-1, *[1] * (v.dim() - 1)).to(v.dtype) for m, v in data.items()}
    ids = [f"s{i}" for i in range(B)]
    return Batch(ids, data, mask, {"text": text_pm & mask["text"][:, None], "audio": audio_pm & mask["audio"][:, None]},
                 [None] * B, [{} for _ in range(B)])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add sync overhead (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_CFG = {
    "arch": "alignment", "dim": 16, "loss": "clip", "pairing": "all", "anchor": None, "locked": [],
    "encoders": {
        "text": {"name": "text_transformer", "vocab_size": 40, "width": 32, "layers": 1, "heads": 2, "max_len": 8},
        "image": {"name": "image_cnn", "image_size": IMG, "channels": [8, 16]},
        "audio": {"name": "audio_cnn", "n_mels": N_MELS, "channels": [16, 16]},
    },
}


def _build(**overrides: object) -> AlignmentModel:
    torch.manual_seed(0)
    return build_alignment_model({**TINY_CFG, **overrides})


def _reference_loss(model: AlignmentModel, batch: Batch) -> torch.Tensor:
    """Per pair: embed only rows with both modalities, plain clip/siglip loss; mean over pairs."""
    scale = model.logit_scale.exp()
    losses = []
    for m1, m2 in model.pairs:
        both = (batch.mask[m1] & batch.mask[m2]).nonzero().squeeze(1)
        if len(both) < 2:
            continue
        a, b = (F.normalize(model.projections[m](model.encoders[m](
            {k: v[both] for k, v in batch.part(m).items()})), dim=-1) for m in (m1, m2))
        losses.append(clip_loss(a, b, scale) if model.logit_bias is None else
                      siglip_loss(a, b, scale, model.logit_bias))
    return torch.stack(losses).mean()


@pytest.mark.parametrize(("loss", "pairing", "anchor"),
                         [("clip", "all", None), ("siglip", "all", None), ("clip", "anchor", "image")])
def test_loss_matches_per_pair_reference(loss: str, pairing: str, anchor: str | None) -> None:
    model = _build(loss=loss, pairing=pairing, anchor=anchor).eval()
    batch = _synthetic_batch()
    value, logs = model(batch)
    torch.testing.assert_close(value, _reference_loss(model, batch), atol=1e-5, rtol=1e-5)
    expected_pairs = 3 if pairing == "all" else 2
    assert sum(k.startswith("loss/") for k in logs) == expected_pairs
    assert logs["pairs/image-text"] == float(((batch.mask["image"]) & batch.mask["text"]).sum())


def test_pairs_with_fewer_than_two_rows_are_skipped() -> None:
    model = _build().eval()
    batch = _synthetic_batch()
    batch.mask["audio"] = torch.zeros(B, dtype=torch.bool)
    batch.mask["audio"][4] = True  # one audio row: no audio pair can be scored
    _, logs = model(batch)
    assert set(k for k in logs if k.startswith("loss/")) == {"loss/image-text"}
    batch.mask = {m: torch.zeros(B, dtype=torch.bool) for m in batch.mask}
    batch.mask["text"][:3] = True
    value, _ = model(batch)
    assert value.item() == 0.0
    value.backward()  # still a graph (through the temperature), so a training step cannot crash


def test_encoders_run_only_on_present_rows() -> None:
    seen: list[int] = []

    class Spy(Encoder):
        modality, output_dim = "image", 3

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
            seen.append(part["values"].shape[0])
            assert part["mask"].all()
            return self.lin(part["values"].mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = AlignmentModel({"image": Spy(), "text": build_alignment_model(TINY_CFG).encoders["text"]}, dim=8)
    batch = _synthetic_batch()
    feats = model.features(batch)
    assert seen == [int(batch.mask["image"].sum())]
    j = model.modalities.index("image")
    assert torch.equal(feats.present[:, j], batch.mask["image"])
    has = batch.mask["image"]
    torch.testing.assert_close(feats.emb[has, j].norm(dim=-1), torch.ones(int(has.sum())))
    assert not feats.emb[~has, j].any()  # zeros where the row lacks the modality


def test_features_read_the_masks_once_into_a_presence_matrix() -> None:
    model = _build().eval()
    batch = _synthetic_batch()
    del batch.data["audio"]  # a modality the batch lacks is absent in every row, whatever its mask says
    feats = model.features(batch)
    assert model.modalities == ("audio", "image", "text")
    assert feats.emb.shape == (B, 3, 16) and feats.present.dtype == torch.bool
    want = torch.stack([torch.zeros(B, dtype=torch.bool), batch.mask["image"], batch.mask["text"]], dim=1)
    assert torch.equal(feats.present, want)
    torch.testing.assert_close(feats.emb.norm(dim=-1), want.float())


def _explicit_loss(model: AlignmentModel, batch: Batch) -> torch.Tensor:
    """The loss written out: per pair, the embeddings of the rows present in both (each encoder run on the
    rows that have its modality), CLIP's symmetric cross-entropy over those rows; mean over pairs."""
    scale = model.logit_scale.exp()
    emb = {}
    for m in model.modalities:
        rows = batch.mask[m].nonzero().squeeze(1)
        emb[m] = dict(zip(rows.tolist(), model.encode(m, {k: v[rows] for k, v in batch.part(m).items()}),
                          strict=True))
    losses = []
    for m1, m2 in model.pairs:
        both = [i for i in range(len(batch)) if i in emb[m1] and i in emb[m2]]
        if len(both) < 2:
            continue
        a = torch.stack([emb[m1][i] for i in both])
        b = torch.stack([emb[m2][i] for i in both])
        logits = scale * a @ b.T
        target = torch.arange(len(both))
        losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


def test_loss_with_missing_modalities_equals_explicit_reference() -> None:
    """One meaning for the mask: the forward's loss and gradients equal the loss written out by hand over
    the rows that have both modalities of each pair (rows lack text, image or audio in this batch)."""
    batch = _synthetic_batch()
    assert not all(bool(v.all()) for v in batch.mask.values())
    model = _build().eval()
    value, logs = model(batch)
    grads = torch.autograd.grad(value, list(model.parameters()))
    ref = _explicit_loss(model, batch)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(value, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    for m1, m2 in model.pairs:
        assert logs[f"pairs/{m1}-{m2}"] == float((batch.mask[m1] & batch.mask[m2]).sum())


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_training_with_missing_modalities_reduces_loss(loss: str) -> None:
    model = _build(loss=loss)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _synthetic_batch()
    with torch.no_grad():
        start = model(batch)[0].item()
    for _ in range(12):
        value, _ = model(batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        model.clamp_logit_scale()
    with torch.no_grad():
        end = model(batch)[0].item()
    assert end < 0.5 * start, (start, end)


def test_clamp_logit_scale_and_init_values() -> None:
    model = _build()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0
    sig = _build(loss="siglip")
    assert sig.logit_scale.item() == pytest.approx(math.log(10))
    assert sig.logit_bias is not None and sig.logit_bias.item() == -10.0
    assert [id(p) for p in sig.loss_parameters()] == [id(sig.logit_scale), id(sig.logit_bias)]


def test_locked_tower_gets_no_gradient_and_stays_in_eval() -> None:
    model = _build(locked=["text"], projections={"text": "linear"})
    model.train()
    assert not model.encoders["text"].training and model.encoders["image"].training
    value, _ = model(_synthetic_batch())
    value.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoders["text"].parameters())
    assert all(p.grad is not None for p in model.encoders["image"].parameters())
    assert model.projections["text"].weight.grad is not None  # the head on a locked tower still trains


def test_embed_batch_and_merge_features() -> None:
    model = _build().eval()
    batch = _synthetic_batch()
    emb = model.embed_batch(batch, "audio")
    assert emb.shape == (int(batch.mask["audio"].sum()), 16) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    with pytest.raises(InvalidInput):
        model.embed_batch(batch, "video")
    # Features of two micro-batches, merged, give the loss of the whole batch (gradient accumulation).
    halves = [_slice(batch, slice(0, 5)), _slice(batch, slice(5, B))]
    merged = merge_features([model.features(h) for h in halves])
    whole = model.features(batch)
    assert torch.equal(merged.present, whole.present)
    torch.testing.assert_close(merged.emb, whole.emb, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.loss_from_features(merged)[0], model(batch)[0], atol=1e-5, rtol=1e-5)


def _slice(batch: Batch, rows: slice) -> Batch:
    return Batch(batch.ids[rows], {m: v[rows] for m, v in batch.data.items()},
                 {m: v[rows] for m, v in batch.mask.items()}, {m: v[rows] for m, v in batch.pad_mask.items()},
                 batch.texts[rows], batch.metadata[rows])


@pytest.mark.parametrize(("change", "field"), [
    ({"archh": "alignment"}, "archh"),
    ({"dim": 0}, "dim"),
    ({"locked": "text"}, "locked"),
    ({"arch": "classifier"}, "arch"),
    ({"loss": "triplet"}, "loss"),
    ({"pairing": "anchor"}, "anchor"),
    ({"locked": ["video"]}, "locked"),
    ({"projections": {"text": "none"}}, "projections.text"),
    ({"encoders": {"text": {"name": "no_such_encoder"}}}, "encoders.text"),
    ({"encoders": {"text": {"name": "image_cnn"}}}, "encoders.text"),
    ({"encoders": {"text": {"name": "text_transformer", "depth": 3}}}, "encoders.text"),
    ({"encoders": {"text": {"name": "text_transformer", "width": 30, "heads": 4}}}, "encoders.text.width"),
    ({"encoders": {"smell": {"name": "text_transformer"}}}, "encoders.smell"),
])
def test_config_errors_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_alignment_model({**TINY_CFG, **change})
    assert info.value.field == field


def test_build_keeps_config_with_defaults_written_out() -> None:
    model = _build()
    defaults = {"dim": 128, "loss": "clip", "pairing": "all", "anchor": None, "locked": [], "projections": "linear",
                "init_logit_scale": None, "init_logit_bias": None}
    assert model.config == {"arch": "alignment", **defaults, **TINY_CFG} and model.config is not TINY_CFG
    assert build_alignment_model(model.config).config == model.config  # a run's config rebuilds the same model
    assert model.modalities == ("audio", "image", "text")
    assert model.preprocess()["text"]["max_len"] == 8


def test_end_to_end_from_samples_with_mixed_modalities(make_samples) -> None:
    """Real `Sample`s (every modality mix, English and Chinese) -> SampleTransform -> collate -> loss."""
    torch.manual_seed(0)
    model = build_alignment_model({"arch": "alignment", "dim": 16, "encoders": {
        "text": {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 48},
        "image": {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
        "audio": {"name": "audio_transformer", "n_mels": 8, "width": 32, "layers": 1, "heads": 2},
        "video": {"name": "video_frames", "frame": {"image_size": 16, "channels": [8, 16]}, "heads": 2,
                  "max_frames": 4}}})
    pre = model.preprocess()
    transform = SampleTransform(
        text=ByteTokenizer(), max_text_len=pre["text"]["max_len"],
        image=ImageTransform(size=pre["image"]["size"]), audio=AudioTransform(n_mels=pre["audio"]["n_mels"]),
        video=VideoTransform(frames=pre["video"]["frames"], image=ImageTransform(size=pre["video"]["image"]["size"])))
    batch = collate(make_samples(8), transform)
    value, logs = model(batch)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert logs["pairs/image-text"] == float((batch.mask["image"] & batch.mask["text"]).sum())


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_loss_is_float32_under_bf16_autocast(loss: str) -> None:
    model = _build(loss=loss).eval()
    batch = _synthetic_batch()
    with torch.no_grad():
        ref, _ = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model(batch)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=2e-2)
