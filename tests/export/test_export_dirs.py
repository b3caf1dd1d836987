"""The export folder: self-contained (a CLAP checkpoint's feature extractor travels with it, like a tokenizer) and
published at once (written into a hidden sibling and renamed in: a failed export leaves nothing behind and never
touches an earlier export, so it can be retried)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from exportkit import media

import polymodal
from polymodal.data.sample import Sample
from polymodal.errors import InvalidInput
from polymodal.models import onnx as onnx_mod
from polymodal.models.onnx import EXPORT_FILE, export_model

ONLY_TEXT = [Sample(id="t", text="only text")]   # static INT8 of the image tower fails: no image to calibrate on


@pytest.fixture(scope="module")
def source(tiny_run: Path) -> polymodal.EmbeddingModel:
    return polymodal.load(tiny_run)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_clap_export_carries_its_feature_extractor(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))
    from tinyckpt import build_tiny_clap

    from polymodal.data.transforms import audio as audio_transforms

    ckpt = tmp_path / "clap"
    ckpt.mkdir()
    build_tiny_clap(ckpt)
    model = polymodal.load(ckpt)
    waves = media(3, seed=4)["audio"]
    texts = ["a red circle", "a dog barks"]
    want_audio, want_text = model.embed(audio=waves), model.embed(text=texts)
    manifest = export_model(model, tmp_path / "export")
    assert manifest["transform"]["audio"]["path"] == "audio_features"   # not the checkpoint's folder
    assert (tmp_path / "export" / "audio_features" / "preprocessor_config.json").is_file()
    shutil.rmtree(ckpt)                                      # the source is gone and the export moved:
    (tmp_path / "export").rename(tmp_path / "moved")         # it works from anywhere
    audio_transforms._clap_extractor.cache_clear()
    exported = polymodal.load(tmp_path / "moved", runtime="onnx")
    np.testing.assert_allclose(exported.embed(audio=waves), want_audio, atol=1e-4, rtol=0)
    np.testing.assert_allclose(exported.embed(text=texts), want_text, atol=1e-4, rtol=0)
    assert exported.fingerprint == model.fingerprint


def test_a_failed_export_leaves_nothing_and_can_be_retried(source: polymodal.EmbeddingModel, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with pytest.raises(InvalidInput):
        export_model(source, out, int8="image=static", calib=ONLY_TEXT)
    assert _siblings(out) == []                              # no half-written folder, no temp folder
    export_model(source, out)                                # the retry needs no --overwrite
    assert polymodal.load(out, runtime="onnx").fingerprint == source.fingerprint
    assert _siblings(out) == ["export"]


def test_a_failed_overwrite_keeps_the_old_export(source: polymodal.EmbeddingModel, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(source, out, int8="text=dynamic")
    before = _snapshot(out)
    with pytest.raises(InvalidInput):
        export_model(source, out, int8="image=static", calib=ONLY_TEXT, overwrite=True)
    assert _snapshot(out) == before and _siblings(out) == ["export"]
    old_fp = json.loads(before[EXPORT_FILE])["fingerprint"]
    assert polymodal.load(out, runtime="onnx").fingerprint == old_fp
    # the second rename fails: the old export is put back
    real_rename = os.rename
    calls: list[str] = []

    def flaky_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(dst).name)
        if Path(dst) == out and Path(src).name.startswith(".export.tmp-"):
            raise OSError("disk gone")
        real_rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_mod.os, "rename", flaky_rename)
        with pytest.raises(OSError, match="disk gone"):
            export_model(source, out, overwrite=True)
    assert len(calls) == 3                                   # aside, (failed) in, back
    assert _snapshot(out) == before and _siblings(out) == ["export"]
    # and a good overwrite replaces it whole
    export_model(source, out, overwrite=True)
    assert not (out / "text.int8.onnx").exists() and _siblings(out) == ["export"]
    assert polymodal.load(out, runtime="onnx").fingerprint == source.fingerprint


def test_refusals_touch_nothing(source: polymodal.EmbeddingModel, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="not empty"):
        export_model(source, other)
    with pytest.raises(InvalidInput, match="something else"):
        export_model(source, other, overwrite=True)
    with pytest.raises(InvalidInput, match="not a folder"):
        export_model(source, tmp_path / "file", overwrite=True)
    assert _snapshot(other) == {"a.txt": b"mine"} and _siblings(other) == ["file", "notes"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(source, empty)                              # an existing empty folder is fine
    assert (empty / EXPORT_FILE).is_file() and _siblings(other) == ["empty", "file", "notes"]
