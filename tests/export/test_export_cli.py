"""`polymodal export` end to end, the --runtime flags of serve and search, the service over an ONNX export, and
a Hugging Face tower (tiny random CLIP) through the same path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from exportkit import media

import polymodal
from polymodal.commands import main as cli
from polymodal.data.formats import write_folder
from polymodal.data.sample import Sample


class Stop(Exception):
    pass


def test_cli_export_with_calibration(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = media(12, seed=8)
    data = tmp_path / "calib"
    write_folder([Sample(id=f"c{i:02d}", text=items["text"][i], video=items["video"][i]) for i in range(12)], data)
    out = tmp_path / "export"
    rc = cli(["export", str(tiny_run), "--format", "onnx", "--out", str(out), "--int8", "text=dynamic,video=static",
              "--calib", str(data), "--calib-samples", "8", "--opset", "18", "--json"])
    assert rc == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["opset"] == 18
    assert {m: t["precision"] for m, t in manifest["towers"].items()} == {
        "audio": "fp32", "image": "fp32", "text": "int8-dynamic", "video": "int8-static"}
    assert manifest["towers"]["video"]["calibration"] == {"samples": 8}
    assert (out / "video.int8.onnx").is_file() and (out / "video.onnx").is_file()
    source = polymodal.load(tiny_run)
    exported = polymodal.load(out, runtime="onnx")
    assert exported.fingerprint == manifest["fingerprint"] != source.fingerprint
    probe = media(3, seed=9)
    np.testing.assert_allclose(exported.embed(image=probe["image"]), source.embed(image=probe["image"]), atol=1e-4,
                               rtol=0)
    assert (exported.embed(video=probe["video"]) * source.embed(video=probe["video"])).sum(1).min() >= 0.98
    # again into the same folder: refused, then replaced with --overwrite
    assert cli(["export", str(tiny_run), "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    rc = cli(["export", str(tiny_run), "--out", str(out), "--overwrite"])
    assert rc == 0 and not (out / "video.int8.onnx").exists()
    assert "exported audio, image, text, video" in capsys.readouterr().out
    assert polymodal.load(out, runtime="onnx").fingerprint == source.fingerprint


def test_cli_static_without_calib_is_an_error(tiny_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--int8", "static"]) != 0
    assert "--calib" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_serve_and_search_pass_the_runtime(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import polymodal.api
    import polymodal.commands.search as search_cmd

    seen: list[dict[str, Any]] = []

    def fake_load(model: str, **kw: Any) -> Any:
        seen.append({"model": model, **kw})
        raise Stop

    monkeypatch.setattr(polymodal.api, "load", fake_load)
    monkeypatch.setattr(search_cmd, "load", fake_load)
    from polymodal.commands import serve

    with pytest.raises(Stop):
        serve.main(["--model", str(tiny_run), "--collection", str(tmp_path / "c"), "--port", "0",
                    "--runtime", "onnx"])
    with pytest.raises(Stop):
        search_cmd.main(["--collection", str(tmp_path / "c"), "--model", str(tiny_run), "--text", "red",
                         "--runtime", "onnx"])
    assert [s.get("runtime") for s in seen] == ["onnx", "onnx"]


def test_service_over_an_onnx_export(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient

    from polymodal.models.onnx import export_model
    from polymodal.serve import ServeSettings, create_app

    source = polymodal.load(tiny_run)
    export_model(source, tmp_path / "export")
    model = polymodal.load(tmp_path / "export", runtime="onnx")
    app = create_app(model, root=tmp_path / "root", collection=tmp_path / "root" / "main",
                     settings=ServeSettings(api_key="k"))
    with TestClient(app) as c:
        r = c.post("/v1/embed", json={"text": ["a red circle", "a blue square left of a green ring"]})
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["vectors"]["text"], dtype=np.float32)
    np.testing.assert_allclose(got, source.embed(text=["a red circle", "a blue square left of a green ring"]),
                               atol=1e-4, rtol=0)


def test_hf_clip_towers_export(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))
    from tinyckpt import build_tiny_clip

    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.models.onnx import export_model, with_runtime

    ckpt = build_tiny_clip(tmp_path / "clip")
    enc = {"text": {"name": "hf_clip_text", "path": str(ckpt)}, "image": {"name": "hf_clip_image", "path": str(ckpt)}}
    model = build_model("alignment", {"dim": 16, "projections": "none", "encoders": enc})
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), {}))
    source = polymodal.EmbeddingModel(model, transform, {"arch": "alignment", "model": model.config,
                                                         "transform": transform.to_dict()}, name=str(ckpt))
    texts = ["a red circle", "the big blue square on a green ring", "photo"]
    images = media(3, seed=2)["image"]
    ort_model = with_runtime(source, "onnx")
    for got in (ort_model.embed(text=texts), ort_model.embed(text=texts[:1])):
        np.testing.assert_allclose(got, source.embed(text=texts[: len(got)]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_model.embed(image=images), source.embed(image=images), atol=1e-4, rtol=0)
    export_model(source, tmp_path / "export", int8="dynamic")
    assert (tmp_path / "export" / "tokenizer").is_dir()   # the export carries its tokenizer
    (tmp_path / "export").rename(tmp_path / "moved")       # and works from anywhere
    int8 = polymodal.load(tmp_path / "moved", runtime="onnx")
    assert int8.fingerprint != source.fingerprint
    assert (int8.embed(text=texts) * source.embed(text=texts)).sum(1).min() >= 0.98
