"""Chinese-CLIP and ALIGN towers against transformers, and every tower's contrastive temperature.

Offline: tiny random ChineseCLIPModel / AlignModel checkpoints (tinyckpt.py) are saved with their own processor
(a BERT WordPiece tokenizer over a vocab file with Chinese characters and emoji; the family's image processor).
The reference is transformers' ``get_text_features`` / ``get_image_features`` on the library's own processor
outputs for raw strings and odd-sized images; ours goes through ``forward``, ``encode_*`` and the polymodal data
pipeline (Sample -> the transform from ``preprocess()`` -> collate -> tower).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from polymodal.data.collate import collate  # noqa: E402
from polymodal.data.sample import Sample  # noqa: E402
from polymodal.data.transforms.compose import SampleTransform  # noqa: E402
from polymodal.data.transforms.resolve import transform_config  # noqa: E402
from polymodal.encoders import create_encoder  # noqa: E402
from polymodal.encoders.pretrained import clear_cache  # noqa: E402
from polymodal.errors import InvalidInput  # noqa: E402

ATOL = 1e-5
FAMILIES = ["chinese_clip", "align"]
TEXTS = ["一个红色的圆", "a photo of the 猫 🐱", "a red😀 circles", "蓝色的方形 😀 照片 big blue square", "猫"]
SHAPES = [(37, 53), (53, 37), (40, 40), (29, 71), (64, 33)]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().float(), dim=-1)


def _images() -> list[np.ndarray]:
    rng = np.random.RandomState(7)
    return [rng.randint(0, 256, (*hw, 3), dtype=np.uint8) for hw in SHAPES]


@pytest.fixture(scope="module")
def ckpt(tiny_ckpts):
    """family -> (dir, reference model, the library's own processor)."""
    out = {}
    for fam in FAMILIES:
        d = tiny_ckpts.dir(fam)
        out[fam] = (d, tiny_ckpts.reference(fam), transformers.AutoProcessor.from_pretrained(d, local_files_only=True))
    return out


def _towers(d, fam):
    return (create_encoder(f"hf_{fam}_text", path=str(d)).eval(),
            create_encoder(f"hf_{fam}_image", path=str(d)).eval())


@pytest.mark.parametrize("fam", FAMILIES)
def test_text_tower_matches_transformers(ckpt, fam):
    d, ref, proc = ckpt[fam]
    text, _ = _towers(d, fam)
    # The processor's own padding: ALIGN's pads every text to 64 tokens; ours pads only to the batch's longest.
    enc = proc(text=TEXTS, return_tensors="pt", **({} if fam == "align" else {"padding": True}))
    assert enc["input_ids"].shape[1] == (64 if fam == "align" else 13)
    assert (enc["input_ids"] == 1).sum() < enc["input_ids"].numel() // 4  # mostly real word pieces, not [UNK]
    assert {21, 33, 34}.issubset(set(enc["input_ids"].flatten().tolist()))  # 一, 😀, 🐱 are their own tokens
    with torch.no_grad():
        expect = ref.get_text_features(**enc).pooler_output
    short = text.tokenizer(TEXTS, padding=True, return_tensors="pt")  # dynamic padding, as the pipeline pads
    with torch.no_grad():
        ours = text({"values": short["input_ids"], "pad_mask": short["attention_mask"].bool(),
                     "mask": torch.ones(len(TEXTS), dtype=torch.bool)})
    assert ours.shape == expect.shape == (len(TEXTS), text.output_dim)
    torch.testing.assert_close(_unit(ours), _unit(expect), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(text.encode_texts(TEXTS)), _unit(expect), atol=ATOL, rtol=0)


@pytest.mark.parametrize("fam", FAMILIES)
def test_image_tower_matches_transformers(ckpt, fam):
    d, ref, proc = ckpt[fam]
    _, image = _towers(d, fam)
    px = proc(images=_images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expect = ref.get_image_features(pixel_values=px).pooler_output
        ours = image({"values": px, "mask": torch.ones(len(px), dtype=torch.bool)})
    assert ours.shape == expect.shape == (len(px), image.output_dim)
    torch.testing.assert_close(_unit(ours), _unit(expect), atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(image.encode_images(_images())), _unit(expect), atol=ATOL, rtol=0)
    with pytest.raises(InvalidInput, match="image"):
        image({"values": torch.zeros(1, 3, image.image_size + 8, image.image_size + 8)})


@pytest.mark.parametrize("fam", FAMILIES)
def test_pipeline_matches_transformers(ckpt, fam):
    """Sample -> transform_config(preprocess()) -> collate -> towers == transformers on its own processor's
    outputs; the pipeline's pixels equal the processor's (ALIGN: x / 127.5 - 1, stated as mean = std = 0.5)."""
    d, ref, proc = ckpt[fam]
    text, image = _towers(d, fam)
    tf = SampleTransform.from_dict(transform_config({"text": text.preprocess(), "image": image.preprocess()}, {}))
    samples = [Sample(id=str(i), text=t, image=im) for i, (t, im) in enumerate(zip(TEXTS, _images(), strict=True))]
    batch = collate(samples, tf)
    enc = proc(text=TEXTS, images=_images(), return_tensors="pt", **({} if fam == "align" else {"padding": True}))
    torch.testing.assert_close(batch.data["image"], enc["pixel_values"], atol=1e-6, rtol=0)
    with torch.no_grad():
        ours_t, ours_i = text(batch.part("text")), image(batch.part("image"))
        out = ref(**enc)  # the full model: normalised embeddings and the logits its temperature gives
    torch.testing.assert_close(_unit(ours_t), out.text_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(_unit(ours_i), out.image_embeds, atol=ATOL, rtol=0)
    logits = math.exp(image.logit_scale) * _unit(ours_i) @ _unit(ours_t).T
    torch.testing.assert_close(logits, out.logits_per_image, atol=1e-4, rtol=1e-5)


def test_preprocess_reads_the_checkpoints(ckpt):
    d, _, _ = ckpt["align"]
    text, image = _towers(d, "align")
    assert text.preprocess() == {"tokenizer": {"kind": "hf", "path": str(d.resolve())}, "max_len": 64,
                                 "pad_to_max": False}  # AlignProcessor's 64, below the position table (72)
    assert image.preprocess() == {"size": 40, "center_crop": False, "resize_to": 40, "interpolation": "bicubic",
                                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert image.image_size == 40 and image.output_dim == 16
    pre = create_encoder("hf_chinese_clip_image", path=str(ckpt["chinese_clip"][0])).preprocess()
    assert (pre["size"], pre["resize_to"], pre["center_crop"]) == (32, 32, False)
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_pixel_affine_covers_normalize_and_include_top(ckpt):
    """EfficientNet's other value paths (normalise with rescale offset; include_top) through ImageTransform."""
    from polymodal.data.transforms import ImageTransform
    from polymodal.encoders.pretrained.hf_clip import image_preprocess

    for kw in ({"rescale_offset": True, "do_normalize": True, "include_top": False},
               {"rescale_offset": False, "do_normalize": True, "include_top": True, "rescale_factor": 1 / 255},
               {"do_rescale": False, "do_normalize": True, "include_top": False}):
        proc = transformers.EfficientNetImageProcessorPil(size={"height": 24, "width": 24}, do_center_crop=False,
                                                          **{"rescale_factor": 1 / 127.5, **kw})
        pre = image_preprocess(proc)
        tf = ImageTransform(size=pre["size"], crop="squash", mean=tuple(pre["mean"]), std=tuple(pre["std"]))
        expect = proc(images=_images(), return_tensors="pt")["pixel_values"]
        tol = 1e-4 if not kw.get("do_rescale", True) else 1e-5  # values up to ~1100 without rescaling
        torch.testing.assert_close(torch.stack([tf(im) for im in _images()]), expect, atol=tol, rtol=1e-6)


@pytest.mark.parametrize("fam", FAMILIES)
def test_towers_split_one_checkpoint(ckpt, fam):
    d, ref, _ = ckpt[fam]
    clear_cache()
    text, image = _towers(d, fam)
    n = sum(p.numel() for p in text.parameters()) + sum(p.numel() for p in image.parameters())
    temperature = ref.temperature if fam == "align" else ref.logit_scale
    unused = sum(p.numel() for p in ref.text_model.pooler.parameters()) if fam == "align" else 0
    assert n == sum(p.numel() for p in ref.parameters()) - temperature.numel() - unused


# ---- temperatures -------------------------------------------------------------------------------------------
def _expected_scales(fam: str, ref) -> tuple[float | None, float | None]:
    if fam == "align":
        return -math.log(float(ref.temperature.detach())), None
    if fam == "clap":
        return float(ref.logit_scale_a.detach()), None  # zero-shot audio classification: logits_per_audio
    if fam == "siglip":
        return float(ref.logit_scale.detach()), float(ref.logit_bias.detach())
    return float(ref.logit_scale.detach()), None


@pytest.mark.parametrize("fam,names", [
    ("clip", ("hf_clip_text", "hf_clip_image")),
    ("siglip", ("hf_siglip_text", "hf_siglip_image")),
    ("chinese_clip", ("hf_chinese_clip_text", "hf_chinese_clip_image")),
    ("align", ("hf_align_text", "hf_align_image")),
    ("clap", ("hf_clap_text", "hf_clap_audio")),
])
def test_logit_scale_and_bias_are_the_checkpoints(tiny_ckpts, fam, names):
    ref = tiny_ckpts.reference(fam)
    scale, bias = _expected_scales(fam, ref)
    for name in names:  # both halves report the pair's temperature, whichever is built first
        tower = create_encoder(name, path=str(tiny_ckpts.dir(fam)))
        assert isinstance(tower.logit_scale, float) and tower.logit_scale == pytest.approx(scale, abs=1e-6)
        assert tower.logit_bias == (None if bias is None else pytest.approx(bias, abs=1e-6))
    # the tiny checkpoints use non-default temperatures, so a default value could not pass by accident
    expected = {"chinese_clip": 2.3, "align": -math.log(0.05), "clap": math.log(20.0)}
    if fam in expected:
        assert scale == pytest.approx(expected[fam], abs=1e-6)
    if fam == "clap":
        assert float(ref.logit_scale_t.detach()) != pytest.approx(scale)  # a and t differ: the choice is observable


def test_sentence_transformers_have_no_temperature(tiny_ckpts):
    tower = create_encoder("st_text", path=str(tiny_ckpts.dir("sentence")))
    assert tower.logit_scale is None and tower.logit_bias is None
