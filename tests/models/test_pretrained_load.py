"""`polymodal.load(CHECKPOINT)`: pretrained checkpoints as embedding models, no training.

Tiny random checkpoints are built offline (tests/encoders/tinyckpt.py) and saved like real ones; the reference is the
library's own model and processor on the same raw inputs (odd-size images, Chinese and emoji text)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))

from tinyckpt import TinyCheckpoints  # noqa: E402

import polymodal  # noqa: E402
from polymodal.errors import InvalidInput, NotFound  # noqa: E402
from polymodal.models.pretrained import detect  # noqa: E402

ATOL = 1e-5
TEXTS = ["a red circle", "一个红色的圆", "the big blue square 😀", "crimson ring on a small green square"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(37, 53), (64, 29), (32, 32), (101, 77)]
    return [rng.integers(0, 256, size=(*shapes[i % 4], 3), dtype=np.uint8) for i in range(n)]


def _unit(x: torch.Tensor) -> np.ndarray:
    x = getattr(x, "pooler_output", x)
    return torch.nn.functional.normalize(x.float(), dim=-1).detach().numpy()


@pytest.mark.parametrize("family", ["clip", "siglip", "chinese_clip", "align"])
def test_embeddings_equal_transformers_on_raw_inputs(ckpts, family):
    d = ckpts.dir(family)
    ref = ckpts.reference(family)
    proc = transformers.AutoProcessor.from_pretrained(d, local_files_only=True, backend="pil")
    model = polymodal.load(str(d))
    assert set(model.modalities) == {"image", "text"}
    padding = "max_length" if family == "siglip" else True
    with torch.no_grad():
        tok = proc.tokenizer(TEXTS, padding=padding, truncation=True, return_tensors="pt",
                             max_length=ref.config.text_config.max_position_embeddings)
        if family == "siglip":  # SigLIP's tokenizer returns no attention mask (trained without one)
            tok.pop("attention_mask")
        want_t = _unit(ref.get_text_features(**tok))
        want_i = _unit(ref.get_image_features(**proc.image_processor(images=_images(4), return_tensors="pt")))
    np.testing.assert_allclose(model.embed(text=TEXTS), want_t, atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.embed(image=_images(4)), want_i, atol=ATOL, rtol=0)
    # the checkpoint's own temperature (and SigLIP's bias) is the model's
    want_scale = -float(torch.log(ref.temperature)) if family == "align" else float(ref.logit_scale)
    assert float(model.model.logit_scale.detach()) == pytest.approx(want_scale, abs=1e-6)
    if family == "siglip":
        assert model.model.logit_bias is not None
        assert float(model.model.logit_bias.detach()) == pytest.approx(float(ref.logit_bias), abs=1e-6)
    else:
        assert model.model.logit_bias is None


def test_clap_text_and_audio_at_another_sample_rate(ckpts):
    """CLAP: text, and audio given at 11025 Hz, resampled to the checkpoint's rate by polymodal; the reference is
    transformers on the waveform at its rate (our resampler's output: transformers refuses another rate)."""
    from polymodal.data.transforms.audio import resample

    d = ckpts.dir("clap")
    ref = ckpts.reference("clap")
    proc = transformers.ClapProcessor.from_pretrained(d, local_files_only=True)
    model = polymodal.load(str(d))
    assert set(model.modalities) == {"audio", "text"}
    rng = np.random.default_rng(1)
    waves = [rng.normal(scale=0.1, size=n).astype(np.float32) for n in (4000, 6000)]  # within the window (a longer clip: first window, documented)
    ours = model.embed(audio=[(w, 11025) for w in waves])
    rate = proc.feature_extractor.sampling_rate
    assert rate != 11025
    native = [resample(w, 11025, rate) for w in waves]
    with torch.no_grad():
        feats = proc.feature_extractor(native, sampling_rate=rate, return_tensors="pt")
        want = _unit(ref.get_audio_features(input_features=feats["input_features"]))
        tok = proc.tokenizer(TEXTS[:1] + TEXTS[2:], padding=True, return_tensors="pt")
        want_t = _unit(ref.get_text_features(**tok))
    np.testing.assert_allclose(ours, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.embed(text=TEXTS[:1] + TEXTS[2:]), want_t, atol=ATOL, rtol=0)


def test_sentence_transformers_folder_is_a_text_only_model():
    st = pytest.importorskip("sentence_transformers")
    from polymodal.encoders.pretrained import default_minilm_dir

    d = default_minilm_dir()
    model = polymodal.load(str(d))
    assert model.modalities == ("text",) and model.dim == 384
    want = st.SentenceTransformer(str(d), device="cpu").encode(TEXTS[:3], normalize_embeddings=True)
    np.testing.assert_allclose(model.embed(text=TEXTS[:3]), want, atol=ATOL, rtol=0)


def test_explicit_kind_and_detection(ckpts, tmp_path):
    d = ckpts.dir("clip")
    assert detect(str(d)).kind.name == "clip"
    assert detect(f"clip:{d}").kind.name == "clip"
    # a folder whose config.json lost "architectures" is still known by model_type
    bare = shutil.copytree(d, tmp_path / "bare")
    cfg = json.loads((bare / "config.json").read_text())
    cfg.pop("architectures", None)
    (bare / "config.json").write_text(json.dumps(cfg))
    assert detect(str(bare)).kind.name == "clip"
    with pytest.raises(NotFound, match="model folder does not exist"):
        detect(f"siglip:{tmp_path / 'nope'}")


def test_unknown_folder_error_lists_what_was_looked_for(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(NotFound) as err:
        polymodal.load(str(tmp_path))
    text = str(err.value)
    for looked in ("polymodal run", "modules.json", "open_clip_config.json", "CLIPModel", "SiglipModel", "ClapModel",
                   "ChineseCLIPModel", "AlignModel", "weights.bin"):
        assert looked in text
    with pytest.raises(NotFound, match="nothing is downloaded"):
        polymodal.load("openai/clip-vit-base-patch32-not-here")
    with pytest.raises(InvalidInput, match="runtime"):
        polymodal.load(str(tmp_path), runtime="tensorrt")


def test_fingerprint_names_the_weights_not_the_folder(ckpts, tmp_path):
    d = ckpts.dir("clip")
    a = polymodal.load(str(d))
    moved = shutil.copytree(d, tmp_path / "elsewhere")
    assert polymodal.load(str(moved)).fingerprint == a.fingerprint
    other = polymodal.load(str(ckpts.dir("clip_legacy")))
    assert other.fingerprint != a.fingerprint
    # weights changed in place: another fingerprint
    changed = shutil.copytree(d, tmp_path / "changed")
    m = transformers.CLIPModel.from_pretrained(changed, local_files_only=True)
    with torch.no_grad():
        m.text_projection.weight.add_(0.01)
    m.save_pretrained(changed)
    assert polymodal.load(str(changed)).fingerprint != a.fingerprint


def test_unrelated_files_beside_a_checkpoint_keep_its_fingerprint(ckpts, tmp_path):
    """Only the files that decide the embeddings are hashed: notes beside the checkpoint change nothing, a changed
    tokenizer file does."""
    d = shutil.copytree(ckpts.dir("clip"), tmp_path / "clip")
    before = polymodal.load(str(d)).fingerprint
    (d / "notes.txt").write_text("downloaded on Tuesday")
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text("{}")
    assert polymodal.load(str(d)).fingerprint == before
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"] = None  # no more lowercasing: other ids for "A Red Circle"
    (d / "tokenizer.json").write_text(json.dumps(tok))
    assert polymodal.load(str(d)).fingerprint != before


def test_an_open_clip_spec_needs_its_checkpoint():
    with pytest.raises(InvalidInput, match="needs its checkpoint"):
        detect("open_clip:ViT-B-32")
