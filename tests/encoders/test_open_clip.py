"""OpenCLIP towers against open_clip's own ``encode_text`` / ``encode_image``.

Needs the ``open_clip`` package (``open_clip_torch``), skipped otherwise. open_clip imports torchvision at import
time, only for its transforms (which we do not use); where torchvision cannot be imported beside this torch, a
minimal stub is put into ``sys.modules`` for this test module only. A tiny random ViT CLIP is written as an
open_clip config JSON + safetensors state dict; the reference is ``open_clip.create_model`` on the same files.
Preprocessing is checked against an independent PIL implementation of open_clip's eval transform (torchvision
Resize(shortest side, bicubic) + CenterCrop with torchvision's rounding + Normalize).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image


def _stub_torchvision() -> None:
    import transformers.utils.import_utils as iu  # decide "no torchvision" before the stub exists

    iu.is_torchvision_available()
    if importlib.util.find_spec("diffusers") is not None:  # diffusers decides at import, with find_spec, which a
        import diffusers.utils.import_utils  # noqa: F401  stub without __spec__ makes raise: decide it now too
    tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                "torchvision.transforms.functional"))
    ops, misc = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.misc")
    tv.__path__, tr.__path__, ops.__path__ = [], [], []

    class _Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stub (test only)")

    for name in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter",
                 "Grayscale"):
        setattr(tr, name, type(name, (_Unavailable,), {}))
    tr.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear", NEAREST="nearest")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    tv.transforms, tr.functional, tv.ops, ops.misc = tr, fn, ops, misc
    sys.modules.update({m.__name__: m for m in (tv, tr, fn, ops, misc)})


if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip is not installed (pip install 'polymodal[openclip]')", allow_module_level=True)
try:
    import torchvision  # noqa: F401
except Exception:  # e.g. PyPI torchvision built for another torch: "operator torchvision::nms does not exist"
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _stub_torchvision()
import open_clip  # noqa: E402

from polymodal.data.collate import collate  # noqa: E402
from polymodal.data.sample import Sample  # noqa: E402
from polymodal.data.transforms.compose import SampleTransform  # noqa: E402
from polymodal.data.transforms.resolve import transform_config  # noqa: E402
from polymodal.encoders import create_encoder  # noqa: E402

ATOL = 1e-5
NAME = "polymodal-tiny-vit"
CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
       "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TEXTS = ["a red circle", "一个红色的圆 😀", "the big blue square on a small green ring with a crimson photo", "🐱"]
SHAPES = [(37, 53), (39, 32), (32, 35), (29, 71), (64, 33)]  # 39, 35: torchvision rounds the crop offset up


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config JSON, checkpoint, reference model built by open_clip.create_model from the same files)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("openclip")
    cfg_file = d / f"{NAME}.json"
    cfg_file.write_text(json.dumps(CFG), encoding="utf-8")
    torch.manual_seed(6)
    model = open_clip.CLIP(**json.loads(json.dumps(CFG)))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    open_clip.add_model_config(cfg_file)  # registers NAME for the reference (test only)
    ref = open_clip.create_model(NAME, pretrained=str(d / "model.safetensors")).eval()
    return cfg_file, d / "model.safetensors", ref


def _images() -> list[np.ndarray]:
    rng = np.random.RandomState(3)
    return [rng.randint(0, 256, (*hw, 3), dtype=np.uint8) for hw in SHAPES]


def _pil_reference(image: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """open_clip's eval transform written with PIL: shortest side -> size (bicubic, long side int(size*l/s)),
    torchvision CenterCrop (top = int(round((h - size) / 2))), /255, normalise."""
    h, w = image.shape[:2]
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    pil = Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    arr = np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("source", ["json", "name"])
def test_towers_match_open_clip(tiny, source):
    cfg_file, ckpt, ref = tiny
    model = str(cfg_file) if source == "json" else NAME
    text = create_encoder("open_clip_text", model=model, checkpoint=str(ckpt)).eval()
    image = create_encoder("open_clip_image", model=model, checkpoint=str(ckpt)).eval()
    ids = open_clip.get_tokenizer(NAME)(TEXTS)
    assert ids.shape == (len(TEXTS), 20)
    px = torch.stack([_pil_reference(im, 32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
                      for im in _images()])
    with torch.no_grad():
        expect_t, expect_i = ref.encode_text(ids), ref.encode_image(px)
        ours_i = image({"values": px, "mask": torch.ones(len(px), dtype=torch.bool)})
    torch.testing.assert_close(ours_i, expect_i, atol=ATOL, rtol=0)
    torch.testing.assert_close(text.encode_texts(TEXTS), expect_t, atol=ATOL, rtol=0)
    torch.testing.assert_close(image.encode_images(_images()), expect_i, atol=ATOL, rtol=0)
    assert text.logit_scale == image.logit_scale == pytest.approx(math.log(30.0), abs=1e-6)
    assert text.logit_bias is None and text.output_dim == image.output_dim == 16
    n = sum(p.numel() for p in text.parameters()) + sum(p.numel() for p in image.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) - ref.logit_scale.numel()


def test_pipeline_matches_open_clip(tiny):
    """Sample -> transform_config(preprocess()) -> collate -> towers == open_clip on its tokens and on the PIL
    reference pixels; the tokenizer spec round-trips open_clip's SimpleTokenizer ids."""
    cfg_file, ckpt, ref = tiny
    text = create_encoder("open_clip_text", model=str(cfg_file), checkpoint=str(ckpt)).eval()
    image = create_encoder("open_clip_image", model=str(cfg_file), checkpoint=str(ckpt)).eval()
    pre = image.preprocess()
    assert (pre["size"], pre["center_crop"], pre["crop_rounding"]) == (32, True, "round")
    tf = SampleTransform.from_dict(transform_config({"text": text.preprocess(), "image": pre}, {}))
    samples = [Sample(id=str(i), text=t, image=im) for i, (t, im) in enumerate(zip(TEXTS, _images(), strict=False))]
    batch = collate(samples, tf)
    ids = open_clip.get_tokenizer(NAME)(TEXTS)
    got = batch.data["text"].masked_fill(~batch.pad_mask["text"], 0)
    torch.testing.assert_close(got, ids[:, : got.shape[1]], atol=0, rtol=0)  # the rest of ids is zero padding
    px = torch.stack([_pil_reference(im, 32, pre["mean"], pre["std"]) for im in _images()[: len(TEXTS)]])
    torch.testing.assert_close(batch.data["image"], px, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(text(batch.part("text")), ref.encode_text(ids), atol=ATOL, rtol=0)
        torch.testing.assert_close(image(batch.part("image")), ref.encode_image(px), atol=ATOL, rtol=0)


def test_polymodal_load_of_an_open_clip_spec_and_folder(tiny, tmp_path):
    """`polymodal.load("open_clip:CONFIG_JSON:CHECKPOINT")` and an OpenCLIP hub-style folder (open_clip_config.json +
    open_clip_model.safetensors) embed like open_clip, normalised, with its temperature for zero-shot."""
    import shutil

    import polymodal

    cfg_file, ckpt, ref = tiny
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG, "preprocess_cfg": {}}))
    shutil.copy(ckpt, folder / "open_clip_model.safetensors")
    px = torch.stack([_pil_reference(im, 32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
                      for im in _images()])
    with torch.no_grad():
        want_t = torch.nn.functional.normalize(ref.encode_text(open_clip.get_tokenizer(NAME)(TEXTS)), dim=-1)
        want_i = torch.nn.functional.normalize(ref.encode_image(px), dim=-1)
    for spec in (f"open_clip:{cfg_file}:{ckpt}", str(folder)):
        model = polymodal.load(spec)
        assert set(model.modalities) == {"image", "text"} and model.dim == 16
        np.testing.assert_allclose(model.embed(text=TEXTS), want_t.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(model.embed(image=_images()), want_i.numpy(), atol=ATOL, rtol=0)
        assert float(model.model.logit_scale.detach()) == pytest.approx(math.log(30.0), abs=1e-6)


def test_the_architecture_name_is_part_of_the_fingerprint(tiny, tmp_path):
    """Two architectures over the same weights (here: GELU vs QuickGELU) embed differently, so their fingerprints
    differ; the same architecture from a moved checkpoint keeps its fingerprint."""
    import shutil

    import polymodal

    _, ckpt, _ = tiny
    quick = json.loads(json.dumps(CFG))
    quick["quick_gelu"] = True
    open_clip.add_model_config(_write(tmp_path / f"{NAME}-quickgelu.json", quick))
    a = polymodal.load(f"open_clip:{NAME}:{ckpt}")
    b = polymodal.load(f"open_clip:{NAME}-quickgelu:{ckpt}")
    assert not np.allclose(a.embed(text=TEXTS), b.embed(text=TEXTS), atol=1e-4)
    assert a.fingerprint != b.fingerprint
    moved = shutil.copy(ckpt, tmp_path / "elsewhere.safetensors")
    assert polymodal.load(f"open_clip:{NAME}:{moved}").fingerprint == a.fingerprint


def _write(path, cfg):
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path
