"""ONNX towers against torch's own outputs: fp32 to 1e-4 for every modality of the packaged imagebind_tiny
recipe's towers (text transformer, ViT, audio CNN + transformer, video frames CNN + transformer) at batch 1 and 5
and several sequence lengths; INT8 within cosine 0.98 of fp32; fingerprints; threads; the missing extra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from exportkit import media

import polymodal
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput, MissingExtra
from polymodal.models.onnx import export_model, load_export, read_manifest, with_runtime
from polymodal.models.onnx_session import THREADS_ENV, resolve_threads, session_options

MODALITIES = ("audio", "image", "text", "video")


@pytest.fixture(scope="module")
def torch_model(tiny_run: Path) -> polymodal.EmbeddingModel:
    return polymodal.load(tiny_run)


@pytest.fixture(scope="module")
def ort_model(tiny_run: Path) -> polymodal.EmbeddingModel:
    return polymodal.load(tiny_run, runtime="onnx")


@pytest.fixture(scope="module")
def int8_export(torch_model: polymodal.EmbeddingModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every transformer-heavy tower dynamic INT8, the video tower (a per-frame CNN) static INT8 calibrated on
    samples other than the ones compared below."""
    calib = _samples(media(16, seed=11))
    out = tmp_path_factory.mktemp("int8") / "export"
    export_model(torch_model, out, int8="audio=dynamic,image=dynamic,text=dynamic,video=static", calib=calib)
    return out


def _samples(items: dict[str, list[Any]]) -> list[Sample]:
    n = len(items["text"])
    return [Sample(id=f"c{i}", text=items["text"][i], image=items["image"][i], video=items["video"][i],
                   audio=items["audio"][i][0], sample_rate=items["audio"][i][1]) for i in range(n)]


@pytest.mark.parametrize("modality", MODALITIES)
def test_fp32_runtime_matches_torch(torch_model: polymodal.EmbeddingModel, ort_model: polymodal.EmbeddingModel,
                                    modality: str) -> None:
    assert ort_model.runtime == "onnx" and torch_model.runtime == "torch"
    items = media(5, seed=3)[modality]
    for batch in (items[:1], items[-1:], items):   # batch 1 (shortest, longest) and 5 (padded, mixed lengths)
        want = torch_model.embed(**{modality: batch})
        got = ort_model.embed(**{modality: batch})
        assert got.shape == want.shape == (len(batch), torch_model.dim) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # rows batched with others (more padding) embed as alone, in both runtimes
    one_by_one = np.concatenate([ort_model.embed(**{modality: [x]}) for x in items])
    np.testing.assert_allclose(one_by_one, ort_model.embed(**{modality: items}, batch_size=5), atol=1e-5, rtol=0)


def test_runtime_shares_the_fingerprint_and_really_runs_in_ort(torch_model: polymodal.EmbeddingModel,
                                                                  ort_model: polymodal.EmbeddingModel) -> None:
    assert ort_model.fingerprint == torch_model.fingerprint
    assert ort_model.runner is not None and set(ort_model.runner.modalities) == set(MODALITIES)
    assert with_runtime(ort_model, "onnx") is ort_model
    assert with_runtime(ort_model, "torch").runtime == "torch"
    # a tower whose session misbehaves changes the output: the ORT path is the one that runs
    session = ort_model.runner.sessions["text"]  # type: ignore[attr-defined]

    class Zero:
        def get_inputs(self) -> Any:
            return session.get_inputs()

        def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((len(feed["values"]), ort_model.dim), np.float32)]

    ort_model.runner.sessions["text"] = Zero()  # type: ignore[attr-defined]
    try:
        assert not ort_model.embed(text=["a red circle"]).any()
    finally:
        ort_model.runner.sessions["text"] = session  # type: ignore[attr-defined]


def test_fp32_export_dir_loads_like_its_source(torch_model: polymodal.EmbeddingModel, tiny_run: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "export"
    manifest = export_model(torch_model, out, opset=17)
    assert sorted(p.name for p in out.iterdir()) == ["audio.onnx", "embed_onnx.py", "image.onnx", "polymodal_export.json",
                                                     "text.onnx", "video.onnx"]
    assert manifest == read_manifest(out)
    assert manifest["modalities"] == list(MODALITIES) and manifest["dim"] == torch_model.dim
    assert manifest["opset"] == 17 and manifest["transform"] == torch_model.config["transform"]
    assert manifest["fingerprint"] == manifest["source"]["fingerprint"] == torch_model.fingerprint
    assert {t["precision"] for t in manifest["towers"].values()} == {"fp32"}
    loaded = polymodal.load(out, runtime="onnx")
    assert loaded.model is None and loaded.fingerprint == torch_model.fingerprint
    # the source's temperature travels in the manifest (zero-shot probabilities use it)
    assert torch_model.temperature is not None and loaded.temperature == pytest.approx(torch_model.temperature)
    assert loaded.modalities == torch_model.modalities and loaded.dim == torch_model.dim
    items = media(5, seed=4)
    for m in MODALITIES:
        np.testing.assert_allclose(loaded.embed(**{m: items[m]}), torch_model.embed(**{m: items[m]}), atol=1e-4,
                                   rtol=0)
    with pytest.raises(InvalidInput, match="runtime"):
        polymodal.load(out)   # an export runs in onnxruntime only
    with pytest.raises(InvalidInput, match="no torch weights"):
        with_runtime(loaded, "torch")
    with pytest.raises(InvalidInput, match="not empty"):
        export_model(torch_model, out)


def test_int8_export_stays_close_and_has_its_own_fingerprint(torch_model: polymodal.EmbeddingModel,
                                                               int8_export: Path) -> None:
    manifest = read_manifest(int8_export)
    precisions = {m: t["precision"] for m, t in manifest["towers"].items()}
    assert precisions == {"audio": "int8-dynamic", "image": "int8-dynamic", "text": "int8-dynamic",
                          "video": "int8-static"}
    assert manifest["towers"]["video"]["calibration"] == {"samples": 16}
    int8 = load_export(int8_export)
    assert int8.fingerprint == manifest["fingerprint"] != torch_model.fingerprint
    items = media(5, seed=6)
    for m in MODALITIES:
        want, got = torch_model.embed(**{m: items[m]}), int8.embed(**{m: items[m]})
        assert not np.allclose(got, want, atol=1e-4), m   # really quantized
        cos = (want * got).sum(axis=1)
        assert cos.min() >= 0.98, (m, cos)
    fp32 = load_export(int8_export, precision="fp32")   # the fp32 graphs are kept: the source's embeddings
    assert fp32.fingerprint == torch_model.fingerprint
    np.testing.assert_allclose(fp32.embed(text=items["text"]), torch_model.embed(text=items["text"]), atol=1e-4,
                               rtol=0)
    file = int8_export / "image.int8.onnx"
    assert (int8_export / "image.onnx").stat().st_size > 1.5 * file.stat().st_size


def test_damaged_graph_is_refused(int8_export: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(int8_export, copy)
    data = bytearray((copy / "text.int8.onnx").read_bytes())
    data[-10] ^= 1
    (copy / "text.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="checksum"):
        load_export(copy)


def test_int8_static_needs_calibration_and_bad_modes_are_named(torch_model: polymodal.EmbeddingModel,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="calib"):
        export_model(torch_model, tmp_path / "a", int8="video=static")
    with pytest.raises(InvalidInput, match="one of"):
        export_model(torch_model, tmp_path / "b", int8="fp8")
    with pytest.raises(InvalidInput, match="no 'speech' tower"):
        export_model(torch_model, tmp_path / "c", int8="speech=dynamic")


def test_threads_are_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort
    import torch

    so = session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    monkeypatch.setenv(THREADS_ENV, "2")
    assert resolve_threads() == 2 and resolve_threads(5) == 5
    monkeypatch.delenv(THREADS_ENV)
    assert resolve_threads() == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(InvalidInput, match=THREADS_ENV):
        resolve_threads()


def test_missing_extra_gives_the_install_hint(torch_model: polymodal.EmbeddingModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime -> ImportError
    with pytest.raises(MissingExtra, match=r"polymodal\[onnx\]"):
        with_runtime(torch_model, "onnx")
