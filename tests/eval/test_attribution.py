"""Modality attribution: `shapley_values` against a brute force over every order of the players (an
independent implementation), the Shapley axioms (additivity terms, symmetry, null player, efficiency), then
`modality_attribution` on a tiny 3-modality classifier built from a packaged recipe against a direct
computation (hand-built masks, numpy log-softmax, the permutation brute force), the empty-coalition fallback,
and `polymodal eval --task classification --attribution` end to end."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.sample import Batch, Sample
from polymodal.errors import InvalidInput
from polymodal.eval.attribution import MAX_PLAYERS, coalitions, modality_attribution, shapley_values
from polymodal.eval.classification import resolve_model
from polymodal.models import build_model
from polymodal.recipes import load_recipe

Game = Callable[[frozenset[str]], float]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def brute_force(value: Game, players: list[str]) -> dict[str, float]:
    """Shapley's definition: the mean marginal contribution over every order in which players arrive."""
    total = dict.fromkeys(players, 0.0)
    orders = list(permutations(players))
    for order in orders:
        before: frozenset[str] = frozenset()
        for p in order:
            total[p] += value(before | {p}) - value(before)
            before = before | {p}
    return {p: t / len(orders) for p, t in total.items()}


def random_game(players: list[str], seed: int) -> Game:
    rng = np.random.default_rng(seed)
    table = {c: float(rng.normal()) for c in coalitions(players)}
    return lambda c: table[c]


PLAYERS = ["audio", "image", "text", "video", "depth"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_over_permutations(n: int, seed: int) -> None:
    players = PLAYERS[:n]
    game = random_game(players, seed + 10 * n)
    got = shapley_values(game, players)
    assert set(got) == set(players)
    assert got == pytest.approx(brute_force(game, players), abs=1e-12)
    # efficiency
    assert sum(got.values()) == pytest.approx(game(frozenset(players)) - game(frozenset()), abs=1e-12)


def test_value_is_called_once_per_coalition() -> None:
    calls: list[frozenset[str]] = []

    def game(c: frozenset[str]) -> float:
        calls.append(c)
        return float(len(c) ** 2)

    shapley_values(game, PLAYERS[:4])
    assert len(calls) == 2 ** 4 and len(set(calls)) == 2 ** 4


def test_additive_game_gives_its_terms() -> None:
    terms = {"audio": 0.3, "image": -1.25, "text": 2.0, "video": 0.0}
    got = shapley_values(lambda c: 7.0 + sum(terms[p] for p in c), list(terms))
    assert got == pytest.approx(terms, abs=1e-12)


def test_symmetry_and_null_player() -> None:
    players = ["audio", "image", "text", "video"]
    rng = np.random.default_rng(3)
    # audio and image are interchangeable, video changes nothing: v depends on |S ∩ {audio, image}|, text
    base = {(k, t): float(rng.normal()) for k in range(3) for t in (False, True)}

    def game(c: frozenset[str]) -> float:
        return base[(len(c & {"audio", "image"}), "text" in c)]

    got = shapley_values(game, players)
    assert got["audio"] == pytest.approx(got["image"], abs=1e-12)
    assert got["video"] == pytest.approx(0.0, abs=1e-12)
    assert got == pytest.approx(brute_force(game, players), abs=1e-12)


def test_player_errors() -> None:
    many = [f"m{i}" for i in range(MAX_PLAYERS + 1)]
    with pytest.raises(InvalidInput) as info:
        shapley_values(lambda c: 0.0, many)
    assert info.value.field == "players"
    with pytest.raises(InvalidInput, match="distinct"):
        shapley_values(lambda c: 0.0, ["audio", "audio"])
    assert len(shapley_values(lambda c: float(len(c)), many[:MAX_PLAYERS])) == MAX_PLAYERS


# ------------------------------------------------------------------------- a tiny classifier from a recipe

CLASSES = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink"]
ENCODERS = {"image": {"name": "image_cnn", "image_size": 16, "channels": [8, 8]},
            "audio": {"name": "audio_cnn", "n_mels": 16, "channels": [8, 8], "layers": 0},
            "text": {"name": "text_transformer", "width": 16, "layers": 1, "heads": 2, "max_len": 32}}


@pytest.fixture(scope="module")
def model() -> Any:
    """fusion_attention_shapes (shapes color, 8 classes) with tiny encoders and a third modality, text."""
    cfg = copy.deepcopy(load_recipe("fusion_attention_shapes").model)
    cfg["encoders"] = ENCODERS
    cfg["fusion"] = {"name": "attention", "hidden": 16}
    torch.manual_seed(0)
    m = build_model("fusion", cfg)
    with torch.no_grad():  # spread the logits so that accuracy and log-probability vary between coalitions
        for p in m.parameters():
            p.mul_(3.0)
    return m.eval()


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(14):
        color = CLASSES[i % 4]
        audio = None if i % 5 == 1 else (0.3 * rng.standard_normal(4000)).astype(np.float32)
        out.append(Sample(f"s{i}", text=None if i == 6 else f"a {color} ring number {i}",
                          image=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), audio=audio,
                          sample_rate=None if audio is None else 16000, metadata={"labels": {"color": color}}))
    return out


def _direct(model: Any, batch: Batch, y: np.ndarray, coalition: frozenset[str]) -> dict[str, np.ndarray]:
    """Reference scores of one coalition: a hand-built mask, float64 log-softmax in numpy."""
    mask = {m: v & (m in coalition) for m, v in batch.mask.items()}
    logits = model.predict(batch, mask).double().numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {"acc": (logits.argmax(axis=1) == y).astype(np.float64), "log_prob": logp[np.arange(len(y)), y]}


def game_of(ref: dict[frozenset[str], dict[str, np.ndarray]], score: str, rows: np.ndarray) -> Game:
    """The game whose value is the mean of ``score`` over ``rows`` in the reference scores."""
    return lambda c: float(ref[c][score][rows].mean())


def test_attribution_equals_direct_computation(model: Any, samples: list[Sample]) -> None:
    tol = 1e-5  # the reference runs one batch, the evaluation batches of 5 (float32 sums in another order)
    report = modality_attribution(model, samples, per_sample=True, batch_size=5)
    players = ["audio", "image", "text"]
    assert report["modalities"] == players and report["n"] == len(samples) and report["empty"] == "model"
    _, tf = resolve_model(model)
    batch = collate(samples, tf)
    y = np.array([CLASSES.index(s.metadata["labels"]["color"]) for s in samples])
    ref = {c: _direct(model, batch, y, c) for c in coalitions(players)}
    for c, scores in ref.items():
        name = "+".join(sorted(c)) or "none"
        assert report["coalitions"][name] == pytest.approx({g: float(v.mean()) for g, v in scores.items()},
                                                           abs=tol)
    for g in ("acc", "log_prob"):
        want = brute_force(game_of(ref, g, np.ones(len(y), dtype=bool)), players)
        assert report["shapley"][g] == pytest.approx(want, abs=tol)
        total = sum(report["shapley"][g].values())
        assert total == pytest.approx(report["full"][g] - report["none"][g], abs=1e-9)
        for i in (0, 1, 6):  # per sample: the same brute force on that sample's game
            one = brute_force(game_of(ref, g, np.arange(len(y)) == i), players)
            assert {m: report["per_sample"][g][m][i] for m in players} == pytest.approx(one, abs=tol)
        for name, row in report["per_class"].items():
            rows = y == CLASSES.index(name)
            want = brute_force(game_of(ref, g, rows), players)
            assert row["n"] == int(rows.sum()) and row[g] == pytest.approx(want, abs=tol)
    assert set(report["per_class"]) == {"red", "green", "blue", "yellow"}
    assert len({round(v, 6) for v in report["coalitions"].values() for v in v.values()}) > 4  # not a flat game
    # a modality a sample lacks is a null player for that sample
    for i, s in enumerate(samples):
        for m, absent in (("audio", s.audio is None), ("text", s.text is None)):
            if absent:
                assert report["per_sample"]["log_prob"][m][i] == pytest.approx(0.0, abs=1e-12)
                assert report["per_sample"]["acc"][m][i] == pytest.approx(0.0, abs=1e-12)


class Wrapped(nn.Module):
    """The same classifier, but with no modality at all it raises (``mode="raise"``) or returns NaN."""

    def __init__(self, inner: Any, mode: str):
        super().__init__()
        self.inner, self.mode = inner, mode
        self.modalities, self.num_classes = inner.modalities, inner.num_classes
        self.classes, self.label_field = inner.classes, inner.label_field

    def preprocess(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = self.inner.preprocess()
        return out

    def predict(self, batch: Batch, mask: Any = None) -> torch.Tensor:
        logits: torch.Tensor = self.inner.predict(batch, mask)
        if any(bool(v.any()) for v in batch.mask.values()):
            return logits
        if self.mode == "raise":
            raise RuntimeError("no modality to fuse")
        return torch.full_like(logits, float("nan"))


@pytest.mark.parametrize("mode", ["raise", "nan", "requested"])
def test_empty_coalition_falls_back_to_the_uniform_guess(model: Any, samples: list[Sample], mode: str) -> None:
    plain = modality_attribution(model, samples)
    if mode == "requested":
        got = modality_attribution(model, samples, empty="uniform")
    else:
        got = modality_attribution(Wrapped(model, mode), samples)
    assert got["empty"] == "uniform" and got["empty_reason"]
    assert got["none"] == pytest.approx({"acc": 1 / 8, "log_prob": -math.log(8)}, abs=1e-12)
    for name, v in plain["coalitions"].items():
        if name != "none":
            assert got["coalitions"][name] == pytest.approx(v, abs=1e-12)
    for g in ("acc", "log_prob"):
        assert sum(got["shapley"][g].values()) == pytest.approx(got["full"][g] - got["none"][g], abs=1e-9)
    with pytest.raises(InvalidInput) as info:
        modality_attribution(model, samples, empty="zero")
    assert info.value.field == "empty"


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("espeakng_loader")
    from polymodal.data.synth import make_dataset
    from polymodal.train import train

    root = tmp_path_factory.mktemp("attribution_cli")
    data = root / "digits"
    make_dataset("digits", data, n=40, seed=0, modalities=("text", "image", "audio"), workers=1, progress=False)
    enc = {**ENCODERS, "audio": {**ENCODERS["audio"], "n_mels": 16}}
    recipe = {"arch": "fusion",
              "model": {"num_classes": 10, "label_field": "label", "encoders": enc,
                        "fusion": {"name": "early"}, "modality_dropout": 0.3},
              "data": {"modalities": ["image", "audio", "text"],
                       "transform": {"audio": {"sample_rate": 22050, "max_seconds": 1.0}}},
              "train": {"batch_size": 8, "lr": 0.01, "warmup_steps": 0, "steps": 3, "log_every": 1, "seed": 0,
                        "ckpt_every": 0}}
    run = root / "run"
    train(Recipe.from_dict(recipe), data, run, progress=False)
    return data, run


def test_cli_flag_adds_the_block_and_a_table(fusion_run: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.commands.eval import main as eval_main
    from polymodal.data.formats import open_dataset

    data, run = fusion_run
    args = [str(run), "--data", str(data), "--split", "train", "--task", "classification", "--no-progress",
            "--attribution"]
    assert eval_main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    block = got["modality_attribution"]
    want = modality_attribution(run, list(open_dataset(data, split="train")))
    assert block == json.loads(json.dumps(want))  # same samples, same model: the same numbers
    assert block["coalitions"]["audio+image+text"]["acc"] == pytest.approx(got["clean"]["acc"], abs=1e-12)
    for m in block["modalities"]:  # the coalition without m is the "m missing" condition
        rest = "+".join(x for x in block["modalities"] if x != m)
        assert block["coalitions"][rest]["acc"] == pytest.approx(got["removed"][m]["acc"], abs=1e-12)
    assert eval_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("modality attribution") for line in lines)
    for m in block["modalities"]:
        row = next(line for line in lines if line.startswith(f"{m} ") and "missing" not in line)
        assert row.split()[1:] == [f"{block['shapley']['acc'][m]:.3f}", f"{block['shapley']['log_prob'][m]:.3f}"]
    none = next(line for line in lines if line.startswith("none "))
    assert none.split()[1:] == [f"{block['none']['acc']:.3f}", f"{block['none']['log_prob']:.3f}"]
    with pytest.raises(InvalidInput) as info:
        eval_main([str(run), "--data", str(data), "--task", "retrieval", "--attribution"])
    assert info.value.field == "--attribution"
