"""`align_image` / `align_text` against transformers' own `AlignModel` holding the same weights: our features are
``get_image_features`` / ``get_text_features`` (eval and training mode, absent rows, our tokenizer and pixel
pipeline), and an ``arch: "alignment"`` model of the two towers gives ALIGN's logits and the InfoNCE of them.
The generic encoder contract runs in test_encoder_contract.py (TINY)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.data.collate import collate
from polymodal.data.sample import Batch, Sample
from polymodal.data.synth import shapes
from polymodal.data.transforms import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.encoders import create_encoder
from polymodal.encoders.align import AlignImage, AlignText
from polymodal.errors import ConfigError, InvalidInput
from polymodal.models.registry import build_model
from polymodal.recipes import load_recipe

transformers = pytest.importorskip("transformers")

IMAGE = {"image_size": 64, "width_coefficient": 0.25, "depth_coefficient": 0.5, "drop_connect_rate": 0.0}
TEXT = {"width": 32, "layers": 2, "heads": 2, "max_len": 96, "dropout": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _samples() -> list[Sample]:
    """Real shapes pictures with English and Chinese captions of different lengths."""
    return [shapes.make_sample(i, "test", seed=1, langs=("en", "zh"), modalities=("text", "image")) for i in range(6)]


def _towers() -> tuple[AlignImage, AlignText]:
    torch.manual_seed(0)
    image = create_encoder("align_image", **IMAGE)
    text = create_encoder("align_text", **TEXT, output_dim=image.output_dim)
    assert isinstance(image, AlignImage) and isinstance(text, AlignText)
    return image, text


def _batch(image: AlignImage, text: AlignText, samples: list[Sample]) -> Batch:
    """Through the data pipeline, as training and evaluation build it from the encoders' preprocess()."""
    cfg = transform_config({"image": image.preprocess(), "text": text.preprocess()}, {})
    return collate(samples, SampleTransform.from_dict(cfg))


def _calibrate(image: AlignImage, batch: Batch) -> None:
    """A few training-mode passes set the BatchNorm running statistics, so eval-mode features are not ~0."""
    image.train()
    with torch.no_grad():
        for _ in range(3):
            image(batch.part("image"))
    image.eval()


def _reference(image: AlignImage, text: AlignText) -> torch.nn.Module:
    """transformers' AlignModel with our towers' configs and a copy of their weights."""
    cfg = transformers.AlignConfig(text_config=text.backbone.config, vision_config=image.backbone.config,
                                   projection_dim=text.output_dim)
    ref = transformers.AlignModel(cfg)
    ref.vision_model.load_state_dict(image.backbone.state_dict(), strict=True)
    missing, unexpected = ref.text_model.load_state_dict(text.backbone.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing)  # ALIGN never uses BERT's pooler
    ref.text_projection.load_state_dict(text.projection.state_dict(), strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def setup() -> tuple[AlignImage, AlignText, torch.nn.Module, Batch]:
    image, text = _towers()
    batch = _batch(image, text, _samples())
    _calibrate(image, batch)
    return image, text.eval(), _reference(image, text), batch


def test_pixels_are_aligns_rescaling(setup) -> None:
    """ALIGN's processor: x / 127.5 - 1 (rescale_offset), no mean/std normalisation."""
    _, _, _, batch = setup
    raw = np.stack([s.image for s in _samples()]).astype(np.float32)
    want = torch.from_numpy(raw / 127.5 - 1.0).permute(0, 3, 1, 2)
    torch.testing.assert_close(batch.data["image"], want, atol=1e-5, rtol=0)


def test_text_features_equal_get_text_features(setup) -> None:
    _, text, ref, batch = setup
    ids, pm = batch.data["text"], batch.pad_mask["text"]
    assert not bool(pm.all()) and bool((ids[:, 0] == 1).all())  # padded, BOS first (our [CLS])
    with torch.no_grad():
        ours = text(batch.part("text"))
        want = ref.get_text_features(input_ids=ids, attention_mask=pm.long()).pooler_output
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
        assert float(want.std()) > 1e-2
        for i in range(ids.shape[0]):  # each caption alone, unpadded
            n = int(pm[i].sum())
            alone = ref.get_text_features(input_ids=ids[i:i + 1, :n]).pooler_output
            torch.testing.assert_close(ours[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_image_features_equal_get_image_features(setup) -> None:
    image, _, ref, batch = setup
    with torch.no_grad():
        ours = image(batch.part("image"))
        want = ref.get_image_features(pixel_values=batch.data["image"]).pooler_output
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
    assert ours.shape == (len(batch), image.output_dim) and float(want.std()) > 1e-2


def test_training_mode_and_absent_rows() -> None:
    """Training mode (BatchNorm on batch statistics): the same as transformers on the rows that are present;
    absent rows come out as zeros and never enter the statistics."""
    image, text = _towers()
    batch = _batch(image, text, _samples())
    ref = _reference(image, text)
    image.train(), text.train(), ref.train()
    present = torch.tensor([True, False, True, True, False, True])
    rows = present.nonzero().squeeze(1)
    part = dict(batch.part("image"), mask=present)
    tpart = dict(batch.part("text"), mask=present)
    ours_img, ours_txt = image(part), text(tpart)
    want_img = ref.get_image_features(pixel_values=batch.data["image"][rows]).pooler_output
    want_txt = ref.get_text_features(input_ids=batch.data["text"][rows],
                                     attention_mask=batch.pad_mask["text"][rows].long()).pooler_output
    torch.testing.assert_close(ours_img[rows], want_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_txt[rows], want_txt, atol=1e-5, rtol=1e-5)
    assert (ours_img[~present] == 0).all() and (ours_txt[~present] == 0).all()
    for mod in (image.backbone, ref.vision_model):  # the same running statistics after one step each
        assert mod.embeddings.batchnorm.num_batches_tracked.item() == 1
    torch.testing.assert_close(image.backbone.embeddings.batchnorm.running_mean,
                               ref.vision_model.embeddings.batchnorm.running_mean)


def test_alignment_model_gives_align_logits_and_infonce(setup) -> None:
    """``arch: "alignment"`` with the two towers, no extra projections and logit_scale = -ln(temperature):
    exp(scale) * cos equals AlignModel's logits_per_text, and the loss is the symmetric InfoNCE of them
    (transformers' own ALIGN loss adds label smoothing 0.1, so it is computed here without it)."""
    image, text, ref, batch = setup
    temperature = 0.05
    with torch.no_grad():
        ref.temperature.fill_(temperature)
    encoders = {"image": {"name": "align_image", **IMAGE},
                "text": {"name": "align_text", **TEXT, "output_dim": image.output_dim}}
    model = build_model("alignment", {"dim": image.output_dim, "projections": "none",
                                      "init_logit_scale": -math.log(temperature), "encoders": encoders})
    model.encoders["image"].load_state_dict(image.state_dict())
    model.encoders["text"].load_state_dict(text.state_dict())
    model.eval()
    with torch.no_grad():
        out = ref(input_ids=batch.data["text"], attention_mask=batch.pad_mask["text"].long(),
                  pixel_values=batch.data["image"])
        t = model.encode("text", batch.part("text"))
        i = model.encode("image", batch.part("image"))
        torch.testing.assert_close(model.logit_scale.exp() * t @ i.T, out.logits_per_text, atol=1e-4, rtol=1e-4)
        loss, _ = model(batch)
    labels = torch.arange(len(batch))
    want = (F.cross_entropy(out.logits_per_text, labels) + F.cross_entropy(out.logits_per_image, labels)) / 2
    torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-4)


def test_recipe_matches_clip_tiny_and_builds() -> None:
    align, clip = load_recipe("align_tiny"), load_recipe("clip_tiny")
    assert align.arch == "alignment" and align.data == clip.data
    assert (align.train.batch_size, align.train.steps) == (clip.train.batch_size, clip.train.steps)
    model = build_model(align.arch, align.model)
    names = {m: type(e).__name__ for m, e in model.encoders.items()}
    assert names == {"image": "AlignImage", "text": "AlignText"}
    assert model.preprocess()["image"]["size"] == shapes.IMAGE_SIZE  # the 64 px pictures, unresized
    assert model.preprocess()["text"]["tokenizer"] == {"kind": "byte"}


def test_bad_config_and_input_are_typed_errors() -> None:
    with pytest.raises(ConfigError, match="image_size"):
        create_encoder("align_image", image_size=16)
    with pytest.raises(ConfigError, match="width_coefficient"):
        create_encoder("align_image", width_coefficient=0)
    with pytest.raises(ConfigError, match="width"):
        create_encoder("align_text", width=30, heads=4)
    text = create_encoder("align_text", vocab_size=50, width=16, layers=1, heads=2, max_len=8)
    with pytest.raises(InvalidInput, match="max_len"):
        text({"values": torch.ones(1, 9, dtype=torch.long)})
    with pytest.raises(InvalidInput, match="token ids"):
        text({"values": torch.full((1, 3), 60)})
    image = create_encoder("align_image", image_size=32, width_coefficient=0.2, depth_coefficient=0.2)
    with pytest.raises(InvalidInput, match="32"):
        image({"values": torch.zeros(1, 3, 64, 64)})
