"""Fusion models through the real trainer on a tiny generated `digits` set (image + speech): loss goes
down, a checkpoint reloads to identical predictions, `evaluate_classification` equals a direct computation
on the same predictions (clean, modality removed by mask, noise), `init_from` an alignment run, and
modality completion's R@1 equals a brute-force retrieval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.formats.dataset import open_dataset
from polymodal.data.sample import Batch, Sample
from polymodal.errors import ConfigError, InvalidInput
from polymodal.eval.classification import evaluate_classification
from polymodal.eval.completion import evaluate_completion
from polymodal.eval.noise import noisy_sample
from polymodal.models import load_model
from polymodal.models.classifier import build_fusion_model, label_ids
from polymodal.train.completion import train_completion
from polymodal.train.trainer import Trainer

IMAGE = {"name": "image_cnn", "image_size": 16, "channels": [8, 16]}
AUDIO = {"name": "audio_cnn", "n_mels": 32, "channels": [16, 16], "layers": 0}
FUSIONS = {"early": {}, "attention": {"hidden": 16}, "late": {}}
LEVELS = (0.0, 0.5, 1.0)
NATIVE_RATE = {"audio": {"sample_rate": 22050}}  # digits speech is 22050 Hz: no resampling, a faster test


def fusion_recipe(fusion: str, steps: int = 40, **model: Any) -> Recipe:
    m: dict[str, Any] = {"num_classes": 10, "label_field": "label", "encoders": {"image": IMAGE, "audio": AUDIO},
                         "fusion": {"name": fusion, **FUSIONS.get(fusion, {})}, "modality_dropout": 0.2}
    m.update(model)
    train = {"batch_size": 16, "lr": 0.01, "weight_decay": 0.0, "warmup_steps": 0, "steps": steps,
             "log_every": 1, "seed": 0}
    return Recipe.from_dict({"arch": "fusion", "model": m, "data": {"modalities": ["image", "audio"],
                                                                   "transform": NATIVE_RATE}, "train": train})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny ops on a shared 2-core machine run several times faster without intra-op threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polymodal.data.synth import make_dataset

    out = tmp_path_factory.mktemp("digits")
    make_dataset("digits", out, n=60, seed=0, modalities=("image", "audio"), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def samples(digits: Path) -> list[Sample]:
    return list(open_dataset(digits))  # every split: 60 samples


@pytest.fixture(scope="module")
def runs(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    out = {}
    for name in FUSIONS:
        run = tmp_path_factory.mktemp(f"run_{name}")
        trainer = Trainer(fusion_recipe(name), digits, run, progress=False)
        trainer.fit()
        out[name] = (run, trainer.model)
    return out


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("name", list(FUSIONS))
def test_trains_and_reloads_exactly(name: str, runs: dict[str, tuple[Path, Any]], samples: list[Sample]) -> None:
    run, trained = runs[name]
    losses = _losses(run)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    model, tf, cfg = load_model(run)
    assert cfg["arch"] == "fusion" and cfg["model"]["arch"] == "fusion"
    assert cfg["model"]["fusion"]["name"] == name
    batch = collate(samples[:20], tf)
    torch.testing.assert_close(model.predict(batch), trained.predict(batch), rtol=0, atol=0)
    assert not model.training


def _direct(model: Any, batch: Batch, y: np.ndarray, removed: str | None = None) -> dict[str, float]:
    """Reference: predictions with a hand-built mask, scored by scikit-learn."""
    mask = {m: (torch.zeros_like(v) if m == removed else v) for m, v in batch.mask.items()}
    pred = model.predict(batch, mask).argmax(1).numpy()
    return {"acc": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro", zero_division=0)}


def test_evaluation_equals_direct_computation(runs: dict[str, tuple[Path, Any]], samples: list[Sample]) -> None:
    late = evaluate_classification(runs["late"][0], samples, robustness=True, levels=LEVELS)
    report = evaluate_classification(runs["attention"][0], samples, robustness=True, levels=LEVELS,
                                     late_fusion_report=late, batch_size=16)
    model, tf, _ = load_model(runs["attention"][0])
    y = np.array([s.metadata["label"] for s in samples])
    batch = collate(samples, tf)
    assert report["n"] == 60 and report["modalities"] == ["audio", "image"]
    for key, want in [("clean", _direct(model, batch, y))] + [
            (m, _direct(model, batch, y, removed=m)) for m in ("audio", "image")]:
        got = report["clean"] if key == "clean" else report["removed"][key]
        assert got == pytest.approx(want, abs=1e-12), key
    # noise: noisy_sample on every raw sample (seed (0, i)), the full transform, the model
    for sweep, noisy_mods in (("image", ["image"]), ("audio", ["audio"]), ("all", ["audio", "image"])):
        accs = []
        for level in LEVELS:
            noisy = [noisy_sample(s, {m: level for m in noisy_mods}, seed=(0, i)) for i, s in enumerate(samples)]
            accs.append(_direct(model, collate(noisy, tf), y)["acc"])
        curve = report["noise"][sweep]
        assert curve["acc"] == pytest.approx(accs, abs=1e-12), sweep
        assert curve["relative_robustness"] == pytest.approx(float(np.trapezoid(accs, LEVELS)))
        lf = np.array(late["noise"][sweep]["acc"])
        want_er = float(np.sum(np.array(accs) - (lf + accs[0] - lf[0])))
        assert curve["effective_robustness"] == pytest.approx(want_er)
        assert late["noise"][sweep].get("effective_robustness") is None
    plain = evaluate_classification(runs["attention"][0], samples)
    assert plain["clean"] == report["clean"] and plain["removed"] == report["removed"] and "noise" not in plain


def test_evaluation_of_a_model_object_and_a_data_dir(runs: dict[str, tuple[Path, Any]], digits: Path) -> None:
    run, trained = runs["early"]
    by_run = evaluate_classification(str(run), digits)  # the lead's CLI passes paths; split "test"
    tf = load_model(run)[1]  # a bare model needs its run's transform (here: audio at 22050 Hz)
    by_model = evaluate_classification(trained, open_dataset(digits, split="test"), transform=tf)
    assert by_run["n"] == 6 and by_run["clean"] == by_model["clean"] and by_run["removed"] == by_model["removed"]


def test_labels_from_a_dotted_field_and_class_list() -> None:
    meta = [{"labels": {"color": "blue"}}, {"labels": {"color": "red"}}, {"labels": {"color": 1}}]
    assert label_ids(meta, "labels.color", 3, ["red", "green", "blue"]) == [2, 0, 1]
    with pytest.raises(InvalidInput, match="'pink' is not in"):
        label_ids([{"labels": {"color": "pink"}}], "labels.color", 3, ["red", "green", "blue"], ["s7"])
    with pytest.raises(InvalidInput, match="sample s7 has no label"):
        label_ids([{"label": 1}], "labels.color", 3, None, ["s7"])
    with pytest.raises(InvalidInput, match="not a class index"):
        label_ids([{"label": 10}], "label", 10)
    model = build_fusion_model(fusion_recipe("late", arch="fusion", label_field="labels.color",
                                             classes=["a", "b", "c"], num_classes=3).model)
    assert model.num_classes == 3 and model.config["num_classes"] == 3
    with pytest.raises(ConfigError, match="num_classes"):
        build_fusion_model(fusion_recipe("late", arch="fusion", classes=["a", "b"]).model)  # 10 != 2


def test_init_from_an_alignment_run(digits: Path, tmp_path: Path) -> None:
    align = Recipe.from_dict({
        "arch": "alignment", "model": {"dim": 16, "encoders": {"image": IMAGE, "audio": AUDIO}},
        "data": {"modalities": ["audio", "image"], "transform": NATIVE_RATE},
        "train": {"batch_size": 16, "lr": 0.005, "steps": 2, "log_every": 1, "seed": 1}})
    Trainer(align, digits, tmp_path / "align", progress=False).fit()
    donor, _, _ = load_model(tmp_path / "align")
    init = {"run": str(tmp_path / "align"), "freeze": True, "modalities": ["image"]}
    recipe = fusion_recipe("attention", steps=3, encoders={"audio": AUDIO}, init_from=init)
    trainer = Trainer(recipe, digits, tmp_path / "fusion", progress=False)
    trainer.fit()
    model, _, cfg = load_model(tmp_path / "fusion")  # rebuilt from the resolved config, no donor read
    assert cfg["model"]["encoders"]["image"] == IMAGE
    assert cfg["model"]["init_from"]["weights_in_checkpoint"] is True
    enc = model.classifier.encoders
    for k, v in donor.encoders["image"].state_dict().items():  # frozen: still the donor's after training
        torch.testing.assert_close(enc["image"].state_dict()[k], v, rtol=0, atol=0)
    assert not any(p.requires_grad for p in enc["image"].parameters())
    assert all(p.requires_grad for p in enc["audio"].parameters())
    bad = fusion_recipe("attention", arch="fusion", encoders={"image": {**IMAGE, "channels": [8, 8]}},
                        init_from=init)
    with pytest.raises(ConfigError, match="differs from the run's encoder"):
        build_fusion_model(bad.model)


def test_completion_recall_equals_brute_force(runs: dict[str, tuple[Path, Any]], samples: list[Sample]) -> None:
    model, tf, _ = load_model(runs["attention"][0])
    head = train_completion(model, samples[:40], tf, "audio", steps=30)
    got = evaluate_completion(model, head, samples[40:], tf, "audio")
    test = samples[40:]
    with torch.no_grad():
        batch = collate(test, tf)
        fused = model.fused(batch, {"audio": torch.zeros(len(test), dtype=torch.bool), "image": batch.mask["image"]})
        q = torch.nn.functional.normalize(head(fused), dim=1).numpy()
        g = torch.nn.functional.normalize(model.classifier.encoders["audio"](batch.part("audio")), dim=1).numpy()
    sims = q @ g.T
    y = np.array([s.metadata["label"] for s in test])
    top = sims.argmax(axis=1)
    assert got["n"] == 20
    assert got["item"]["R@1"] == pytest.approx(float(np.mean(top == np.arange(20))))
    assert got["class_R@1"] == pytest.approx(float(np.mean(y[top] == y)))
    assert got["chance"]["item_R@1"] == pytest.approx(1 / 20)
