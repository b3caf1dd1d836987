"""A pretrained checkpoint wherever a run is accepted: `polymodal index build`, `search`, `eval --task
retrieval|zeroshot` and `quickstart --model`, on a tiny random CLIP checkpoint built offline."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("faiss")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))

from tinyckpt import build_tiny_clip  # noqa: E402

import polymodal  # noqa: E402
from polymodal.commands import main  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    assert main(["data", "make", "shapes", "--out", str(out), "--n", "40", "--modalities", "image,text", "--no-progress"]) == 0
    return out


def _run(*argv: str) -> tuple[int, str, str]:
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = main(list(argv))
    return rc, so.getvalue(), se.getvalue()


def test_index_build_and_search_with_a_checkpoint(clip_dir, shapes, tmp_path):
    coll = tmp_path / "coll"
    rc, _, err = _run("index", "build", "--model", str(clip_dir), "--data", str(shapes), "--split", "test",
                      "--collection", str(coll))
    assert rc == 0, err
    rc, out, err = _run("search", "--collection", str(coll), "--model", str(clip_dir), "--text", "a red circle",
                        "-k", "3", "--json")
    assert rc == 0, err
    hits = json.loads(out)["results"][0]["hits"] if "results" in json.loads(out) else json.loads(out)["hits"]
    assert len(hits) == 3
    # the hits are the exact nearest neighbours of the checkpoint's own text embedding
    model = polymodal.load(str(clip_dir))
    res = polymodal.search(coll, model, text="a red circle", k=3)
    assert [h["id"] for h in res.hits(0)] == [h["id"] for h in hits]


def test_eval_zeroshot_uses_the_checkpoints_temperature(clip_dir, shapes):
    rc, out, err = _run("eval", str(clip_dir), "--data", str(shapes), "--task", "zeroshot", "--label-field",
                        "labels.color", "--json", "--no-progress")
    assert rc == 0, err
    res = json.loads(out)["image"]
    scale = float(np.exp(float(polymodal.load(str(clip_dir)).model.logit_scale.detach())))
    assert res["logit_scale"] == pytest.approx(scale) and res["logit_scale"] != 100.0
    assert np.isfinite(res["nll"]) and 0.0 <= res["acc1"] <= 1.0
    rc, out, err = _run("eval", str(clip_dir), "--data", str(shapes), "--task", "retrieval", "--json",
                        "--no-progress")
    assert rc == 0, err
    assert "text->image" in json.loads(out)["directions"]
    rc, _, err = _run("eval", str(clip_dir), "--data", str(shapes), "--task", "classification")
    assert rc == 1 and "not a polymodal run" in err


def test_quickstart_with_a_given_model_trains_nothing(clip_dir, tmp_path):
    out = tmp_path / "qs"
    rc, stdout, err = _run("quickstart", "--model", str(clip_dir), "--out", str(out), "--n-shapes", "40",
                           "--no-fusion", "--no-progress", "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    names = [s["name"] for s in summary["steps"]]
    assert "train" not in names and "evaluate" in names and "collection" in names
    assert summary["trained"] == {} and summary["run"] == str(clip_dir)
    assert str(clip_dir) in summary["serve_command"]
    assert {"text->image", "image->text"} <= set(summary["retrieval"]["directions"])
    # a text+image model asks no speech query
    assert summary["queries"] and all(q["kind"] == "text" for q in summary["queries"])
    assert (out / "report.html").is_file() and "not trained here" in (out / "report.html").read_text()


def test_eval_runs_an_onnx_export_of_a_checkpoint(clip_dir, shapes, tmp_path):
    """`polymodal export CHECKPOINT` then `eval EXPORT --runtime onnx`: the same retrieval numbers as torch (fp32
    export, 1e-4 parity), and the export's own temperature for zero-shot."""
    pytest.importorskip("onnxruntime")
    export = tmp_path / "export"
    rc, _, err = _run("export", str(clip_dir), "--format", "onnx", "--out", str(export))
    assert rc == 0, err
    results = {}
    for runtime, model in (("torch", clip_dir), ("onnx", export)):
        rc, out, err = _run("eval", str(model), "--data", str(shapes), "--task", "retrieval", "--json",
                            "--no-progress", "--runtime", runtime)
        assert rc == 0, err
        results[runtime] = json.loads(out)["directions"]
    for d, m in results["torch"].items():
        assert results["onnx"][d]["R@1"] == pytest.approx(m["R@1"]) and results["onnx"][d]["n_queries"] == m["n_queries"]
    rc, _, err = _run("eval", str(export), "--data", str(shapes), "--task", "retrieval", "--no-progress")
    assert rc == 1 and "--runtime onnx" in err


def test_the_service_serves_a_checkpoint(clip_dir, tmp_path):
    """`polymodal serve --model CHECKPOINT`'s app: /v1/embed and the OpenAI-compatible /v1/embeddings return the
    checkpoint's own embeddings, under the checkpoint folder's name as the model id."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    model = polymodal.load(str(clip_dir))
    want = model.embed(text=["a red circle", "一个红色的圆"])
    with TestClient(create_app(model, root=tmp_path / "root", collection=tmp_path / "root" / "main")) as c:
        got = c.post("/v1/embed", json={"text": ["a red circle", "一个红色的圆"]})
        assert got.status_code == 200, got.text
        np.testing.assert_allclose(np.array(got.json()["vectors"]["text"]), want, atol=1e-6)
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == [clip_dir.name]
        oa = c.post("/v1/embeddings", json={"model": clip_dir.name, "input": ["a red circle", "一个红色的圆"],
                                            "encoding_format": "float"})
        assert oa.status_code == 200, oa.text
        np.testing.assert_allclose(np.array([d["embedding"] for d in oa.json()["data"]]), want, atol=1e-6)
