"""bench/alignment_quality.py's scoring helpers: scene groups and the identity R@1 ceiling they imply,
the synonym query set (never a template word), object queries' positives, and the targets table."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from polymodal.data.sample import Sample
from polymodal.data.synth import captions as cap
from polymodal.eval.retrieval import retrieval_ranks


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("alignment_quality")


def _obj(color: str, shape: str, pos: str = "center", size: str = "small") -> dict[str, str]:
    return {"color": color, "shape": shape, "position": pos, "size": size}


def _sample(objects: list[dict[str, str]], heldout: bool = False) -> Sample:
    rel = "left_of" if len(objects) == 2 else None
    return Sample(id=f"s{len(objects)}{int(heldout)}", text="a caption", metadata={"objects": objects, "relation": rel, "heldout": heldout,
                                       "labels": {"color": objects[0]["color"], "shape": objects[0]["shape"]}})


def _samples() -> list[Sample]:
    return [_sample([_obj("red", "circle")]),                        # 0 \ same scene
            _sample([_obj("red", "circle")]),                        # 1 /
            _sample([_obj("red", "circle", size="large")]),          # 2 alone (size differs)
            _sample([_obj("blue", "star"), _obj("red", "circle")], heldout=True),  # 3 \ same scene
            _sample([_obj("red", "circle"), _obj("blue", "star")], heldout=True),  # 4 / (object order)
            _sample([_obj("blue", "star")], heldout=True)]           # 5 alone


def test_scene_groups_and_ceiling(bench: ModuleType) -> None:
    samples = _samples()
    groups = bench.scene_groups(samples)
    assert [sorted(g) for g in groups] == [[0, 1], [0, 1], [2], [3, 4], [3, 4], [5]]
    stats = bench.scene_stats(samples)
    assert stats["scene_duplicate_rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert stats["R@1 ceiling all"] == pytest.approx((0.5 + 0.5 + 1 + 0.5 + 0.5 + 1) / 6, abs=1e-4)
    assert stats["R@1 ceiling heldout"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["R@1 ceiling seen"] == pytest.approx(2 / 3, abs=1e-4)
    # The ceiling is what an ideal model gets when ties inside a scene fall at random: same embedding per
    # scene, identity positives -> expected R@1 over random tie orders equals the ceiling.
    emb = np.zeros((6, 4), dtype=np.float32)
    for i, g in enumerate(groups):
        emb[i, min(g) % 4] = 1.0
    emb[2] = [0, 0, 0.6, 0.8]
    emb[5] = [0, 0.6, 0, 0.8]
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(400):
        noise = rng.normal(0, 1e-4, emb.shape).astype(np.float32)
        g = emb + noise
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        ranks = retrieval_ranks(emb, g, positives=[[i] for i in range(6)]).ranks
        hits.append((ranks < 1).mean())
    assert float(np.mean(hits)) == pytest.approx(stats["R@1 ceiling all"], abs=0.05)


def test_synonyms_never_template_words(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    bench.check_unseen()  # raises if a synonym is a template word
    vocab = bench.template_vocabulary()
    assert {"red", "circle", "small"} <= vocab
    meta = {"objects": [_obj("red", "circle", pos="center")], "relation": None}
    for i in (0, 1):
        words = set(bench.synonym_caption(meta, i).split())
        assert not ({"red", "circle", "small"} & words)
    assert bench.synonym_caption(meta, 0).startswith("a tiny crimson ring ")
    assert bench.synonym_caption(meta, 0).endswith(cap.POSITION_EN["center"][0])
    monkeypatch.setattr(bench, "SYNONYMS", dict(bench.SYNONYMS, red=("red", "red")))
    with pytest.raises(SystemExit, match="red"):
        bench.check_unseen()


def test_object_queries_positives(bench: ModuleType) -> None:
    samples = _samples()
    texts, pos = bench.object_queries(samples, synonyms=False)
    by_text = dict(zip(texts, pos, strict=True))
    assert by_text["a red circle"] == [0, 1, 2, 3, 4]  # either object counts
    assert by_text["a blue star"] == [3, 4, 5]
    assert "a red star" not in by_text  # no item shows it: no query
    syn_texts, syn_pos = bench.object_queries(samples, synonyms=True)
    assert syn_pos == pos and syn_texts[0] in ("a crimson ring", "a scarlet disc")


def test_targets_and_markdown_agree(bench: ModuleType) -> None:
    ev: dict[str, Any] = {"directions": {"text->image": {"R@1": 0.7, "R@5": 0.97}, "audio->image": {"R@1": 0.6, "R@5": 0.9}},
          "text->image scene R@1": 0.81, "caption_duplicate_rate": 0.01}
    result: dict[str, Any] = {"split": "test", "n_test": 6, "n_heldout": 3, "scenes": {"scene_duplicate_rate": 0.2,
                                                                       "R@1 ceiling all": 0.88},
              "machine": {"cpus": 2, "processor": "x", "torch": "t", "threads": 1, "load_start": [0],
                          "load_end": [0]},
              "shapes": {"audioclip_tiny": {"train": {"data": "shapes", "steps_budget": 800, "minutes_budget": None, "train_s": 900,
                                                      "steps": 800, "process_cpu_s": 900, "peak_rss_mb": 10},
                                            "eval": ev}},
              "synonyms": {}}
    result["targets"] = bench.targets(result)
    got = {k: v[1] for k, v in result["targets"].items()}
    assert got["audioclip_tiny text->image R@1"] == 0.7
    assert got["audioclip_tiny text->image scene-match R@1 (see note)"] == 0.81
    assert got["audioclip_tiny speech->image R@5"] == 0.9
    assert got["lit_minilm synonym captions text->image R@5"] is None
    md = bench.markdown(result)
    assert "| audioclip_tiny text->image R@1 >= 0.8 | 0.700 | no |" in md
    assert "| audioclip_tiny text->image scene-match R@1 (see note) >= 0.8 | 0.810 | yes |" in md
    assert "| lit_minilm synonym captions text->image R@5 >= 0.6 | - | no |" in md
    assert "| audioclip_tiny | shapes | 800 steps | 900 | 800 |" in md  # the budget beside the wall time


def test_budgets_are_steps_unless_minutes_are_asked_for(bench: ModuleType) -> None:
    names = ["audioclip_tiny", "clip_tiny", "imagebind_tiny"]
    got = bench.budgets(names)
    assert got == {"audioclip_tiny": {"steps": 872}, "clip_tiny": {"steps": 1587}, "imagebind_tiny": {"steps": 243}}
    got = bench.budgets(names, steps="clip_tiny=10", minutes="imagebind_tiny=2.5")
    assert got == {"audioclip_tiny": {"steps": 872}, "clip_tiny": {"steps": 10}, "imagebind_tiny": {"minutes": 2.5}}
    assert bench.budgets(names, small=True) == dict.fromkeys(names, {"steps": bench.SMALL_STEPS})
    assert bench.budget_args({"steps": 872}) == ["--steps", "872"]
    assert bench.budget_args({"minutes": 2.5}) == ["--minutes", "2.5"]
    for kwargs, match in (({"steps": "clip=3"}, "unknown run"), ({"steps": "clip_tiny=3", "minutes": "clip_tiny=1"},
                                                               "not both")):
        with pytest.raises(SystemExit, match=match):
            bench.budgets(names, **kwargs)
    with pytest.raises(SystemExit, match="unknown run"):
        bench.budgets(["clip"])


def test_markdown_reads_budgets_old_and_new(load_bench: Callable[[str], ModuleType]) -> None:
    report = load_bench("alignment_report")
    assert report.budget({"steps_budget": 872, "minutes_budget": None}) == "872 steps"
    assert report.budget({"steps_budget": None, "minutes_budget": 2.5}) == "2.5 min"
    assert report.budget({"minutes_budget": 15.0}) == "15 min"  # a result written before step budgets


def test_merge_results(bench: ModuleType) -> None:
    def part(run: str, load: float) -> dict[str, Any]:
        return {"split": "test", "n_test": 6, "n_heldout": 3, "shapes": {run: {"x": 1}},
                "synonyms": {run: {"y": 2}} if run == "a" else {}, "scenes": {"scene_duplicate_rate": 0.2},
                "machine": {"load_start": [load] * 3, "load_end": [load + 1] * 3, "threads": 1}}
    merged = bench.merge_results([part("a", 1.0), {**part("b", 2.0), "digits": {"z": 3}}])
    assert list(merged["shapes"]) == ["a", "b"] and list(merged["synonyms"]) == ["a"]
    assert merged["digits"] == {"z": 3} and merged["scenes"] == {"scene_duplicate_rate": 0.2}
    assert merged["machine"]["load_start"] == [2.0] * 3 and merged["machine"]["merged_from"] == 2
    with pytest.raises(SystemExit, match="same split"):
        bench.merge_results([part("a", 1.0), {**part("b", 1.0), "n_test": 7}])
    with pytest.raises(SystemExit, match="same split"):
        bench.merge_results([part("a", 1.0), {**part("b", 1.0), "split": "val"}])
    digits_only = {**part("d", 0.5), "shapes": {}, "n_test": 0, "n_heldout": 0, "digits": {"z": 4}}
    merged = bench.merge_results([part("a", 1.0), digits_only])  # no shapes test set: no conflict
    assert merged["n_test"] == 6 and merged["digits"] == {"z": 4}
