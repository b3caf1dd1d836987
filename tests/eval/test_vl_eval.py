"""Evaluation of vl_encoder runs (`polymodal.eval.vl`): the pointing game, ITM accuracy and R@1 with re-ranking
against brute-force references (the model's scores are replaced by known ones), the CLI tasks and their errors,
and the `VLModel` front door."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import genkit as g  # noqa: E402

import polymodal  # noqa: E402
from polymodal.commands import eval as eval_cmd  # noqa: E402
from polymodal.data.synth import shapes  # noqa: E402
from polymodal.errors import InvalidInput  # noqa: E402
from polymodal.eval import vl  # noqa: E402
from polymodal.models import build_model  # noqa: E402
from polymodal.models.vl_encoder import VLEncoder  # noqa: E402
from polymodal.models.vl_front import VLModel  # noqa: E402
from polymodal.train.trainer import Trainer  # noqa: E402

pytest.importorskip("transformers")
SIZES = {"hidden": 32, "layers": 1, "cross_layers": 1, "visual_layers": 1, "heads": 2}


@pytest.fixture(scope="module")
def test_samples() -> list[Any]:
    return [shapes.make_sample(i, "test", modalities=("text", "image")) for i in range(24)]


def _model(samples: list[Any], **cfg: Any) -> tuple[VLEncoder, Any]:
    torch.manual_seed(0)
    m = build_model("vl_encoder", {"family": "visualbert", "visual": "regions", "tokenizer": dict(g.TOKENIZER),
                                   "sizes": SIZES, "patch": 16, "tasks": {"pretrain": 1.0, "vqa": 1.0}, **cfg})
    assert isinstance(m, VLEncoder)
    m.fit_data(samples)
    m.eval()
    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config

    return m, SampleTransform.from_dict(transform_config(m.preprocess(), {})).eval()


@pytest.mark.parametrize("target", ["named", "other"])
def test_pointing_game_scores_the_attended_region(test_samples: list[Any], target: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    m, tf = _model(test_samples)
    real = m.attention
    expected_n = 0
    for s in vl.usable(m, test_samples):
        objs = s.metadata["objects"]
        if len(objs) == 2 and objs[0]["shape"] != objs[1]["shape"]:
            expected_n += sum(s.targets.captions[0].text.lower().count(o["shape"]) == 1 for o in objs)

    def fake(batch: Any, texts: list[str], method: str = "attention") -> Any:
        att, v = real(batch, texts, method)
        att = torch.zeros_like(att)
        tok = m._tok()
        for i, meta in enumerate(batch.metadata):  # all of a shape word's attention on region 1 + its object index
            for j, o in enumerate(meta["objects"]):
                for p in vl.word_spans(tok, texts[i], [o["shape"]]).get(o["shape"], []):
                    att[i, p, 1 + (j if target == "named" else 1 - j)] = 1.0
        return att, v

    monkeypatch.setattr(m, "attention", fake)
    out = vl.pointing_eval(m, tf, test_samples, batch_size=7)
    assert out["n"] == expected_n > 0
    assert out["accuracy"] == out["attention"] == out["gradcam"] == (1.0 if target == "named" else 0.0)
    assert out["chance"] == pytest.approx(0.5)  # two object regions, the global one excluded


def test_itm_accuracy_and_reranked_recall(test_samples: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    m, tf = _model(test_samples)
    items = vl.usable(m, test_samples)
    caps = [m.captions_of(s.targets)[0] for s in items]
    truth = {c: s.id for s, c in zip(items, caps, strict=True)}
    monkeypatch.setattr(m, "itm_scores", lambda batch, texts: torch.tensor(
        [0.9 if truth.get(t) == i else 0.1 for i, t in zip(batch.ids, texts, strict=True)]))
    assert vl.itm_accuracy_eval(m, tf, test_samples, batch_size=5)["accuracy"] == 1.0
    rng = np.random.default_rng(0)
    q, gal = rng.normal(size=(len(items), 6)), rng.normal(size=(len(items), 6))
    out = vl.retrieval_eval(m, tf, test_samples, candidates=(q, gal), k=5, batch_size=7)
    order = np.argsort(-(q @ gal.T), axis=1)
    ranks = [int(np.nonzero(order[i] == i)[0][0]) for i in range(len(items))]
    assert out["contrastive_r1"]["all"] == pytest.approx(np.mean([r == 0 for r in ranks]))
    # a perfect matching head finds every query whose picture is among the top 5
    assert out["itm_r1"]["all"] == pytest.approx(np.mean([r < 5 for r in ranks])) == out["recall_at_k"]
    with pytest.raises(InvalidInput, match="candidate"):
        vl.retrieval_eval(m, tf, test_samples)


@pytest.fixture(scope="module")
def blip_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vlrun")
    train = [shapes.make_sample(i, "train", modalities=("text", "image")) for i in range(24)]
    test = [shapes.make_sample(i, "test", modalities=("text", "image")) for i in range(12)]
    data = g.write_data(root / "data", {"train": train, "val": test[:4], "test": test}, ["image", "text"])
    cfg = {"family": "blip", "visual": "patches", "sizes": SIZES, "patch": 16, "queue": 16,
           "objectives": {"itc": 1.0, "itm": 1.0, "mlm": 1.0, "mrm": 0.0}, "tasks": {"pretrain": 1.0, "vqa": 1.0}}
    Trainer(g.recipe("vl_encoder", cfg, steps=2, batch_size=8), data, root / "run", progress=False).fit()
    return data, root / "run"


def test_cli_tasks(blip_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = blip_run
    for task, key in (("matching", "retrieval"), ("grounding", "pointing"), ("vqa", "vqa")):
        assert eval_cmd.main([str(run), "--data", str(data), "--task", task, "--json", "--no-progress"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["family"] == "blip" and key in out
    assert out["vqa"]["n"] > 0 and 0.0 <= out["vqa"]["overall"] <= 1.0
    assert eval_cmd.main([str(run), "--data", str(data), "--task", "matching", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ITM accuracy" in text and "contrastive" in text
    with pytest.raises(InvalidInput, match="--task matching") as err:
        eval_cmd.main([str(run), "--data", str(data), "--task", "retrieval"])
    assert err.value.field == "--task"


def test_front_door(blip_run: tuple[Path, Path], test_samples: list[Any]) -> None:
    _, run = blip_run
    m = polymodal.load(run)
    assert isinstance(m, VLModel) and m.family == "blip"
    images = [s.image for s in test_samples[:3]]
    texts = [s.text for s in test_samples[:3]]
    p = m.match(images, texts)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    direct = m.model.itm_scores(m._batch(images, None), texts).numpy()
    assert np.allclose(p, direct)
    maps = m.attention(images, texts)
    assert len(maps) == 3 and np.allclose(maps[0]["map"].sum(-1), 1.0, atol=1e-4)
    assert all(a in m.model.answers for a in m.answer(images, ["What color is the shape?"] * 3))
    t, i = m.embed(text=texts), m.embed(image=images)
    assert t.shape == i.shape and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    with pytest.raises(InvalidInput, match="one text per picture"):
        m.match(images, texts[:2])
