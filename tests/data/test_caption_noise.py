"""Caption noise for `shapes` (web alt-text): only train samples, an exact fraction, half "wrong" half
"unrelated"; the noisy text replaces ``text`` and the image captions and nothing else; every clean sample is
byte-identical to the same data set made without noise (hashes of the encoded samples), and the CLI records
and shows the noisy count."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from polymodal.commands.data import main as data_main
from polymodal.data.codec import sample_to_fields
from polymodal.data.formats.webdataset import read_webdataset
from polymodal.data.sample import Sample
from polymodal.data.synth import make, make_dataset, shapes
from polymodal.errors import InvalidInput
from polymodal.eval.caption_parse import parse_shapes_caption

N, SEED, LANGS, MODS = 40, 3, ("en", "zh"), ("text", "image", "video")
# Independent of the generator: words that name something in a shapes scene (none may appear in junk).
SCENE_WORDS_EN = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "circle", "square",
                  "triangle", "diamond", "star", "cross", "small", "little", "large", "big", "left", "right")
SCENE_WORDS_ZH = ("红", "绿", "蓝", "黄", "紫", "橙", "青", "粉", "圆", "正方", "三角", "菱", "星", "十字", "左", "右")


def _hash(s: Sample) -> str:
    h = hashlib.sha256()
    for ext, data in sorted(sample_to_fields(s).items()):
        h.update(ext.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _make(root: Path, p: float | None) -> dict[str, Sample]:
    kw = {} if p is None else {"caption_noise": p}
    make_dataset("shapes", root, n=N, seed=SEED, langs=LANGS, modalities=MODS, workers=1, progress=False, **kw)
    return {s.id: s for split in make.SPLITS for s in read_webdataset(root / split)}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Sample]]:
    root = tmp_path_factory.mktemp("noise")
    return {"zero": _make(root / "zero", 0.0), "half": _make(root / "half", 0.5), "fifth": _make(root / "fifth", 0.2)}


def _noisy(samples: dict[str, Sample]) -> dict[str, str]:
    return {k: s.metadata["caption_noise"] for k, s in samples.items() if "caption_noise" in s.metadata}


def test_zero_noise_is_the_plain_generator(sets: dict[str, dict[str, Sample]]) -> None:
    """Reference: every sample straight from `shapes.make_sample` without the noise argument."""
    zero = sets["zero"]
    assert len(zero) == N and not _noisy(zero)
    for split_index, (split, _) in enumerate(make.assign_splits(N, SEED)):
        ref = shapes.make_sample(split_index, split, seed=SEED, langs=LANGS, modalities=MODS)
        assert _hash(zero[ref.id]) == _hash(ref), ref.id


def test_clean_samples_identical_and_noisy_only_change_text(sets: dict[str, dict[str, Sample]]) -> None:
    zero, half = sets["zero"], sets["half"]
    noisy = _noisy(half)
    n_train = make.split_counts(N)["train"]
    assert len(noisy) == round(0.5 * n_train)
    kinds = sorted(noisy.values())
    assert abs(kinds.count("wrong") - kinds.count("unrelated")) <= 1
    for key, s in half.items():
        clean = zero[key]
        if key not in noisy:
            assert _hash(s) == _hash(clean), key
            continue
        assert s.metadata["split"] == "train"
        assert {k: v for k, v in s.metadata.items() if k != "caption_noise"} == clean.metadata
        assert (s.image == clean.image).all() and (s.video == clean.video).all()
        assert s.targets.qa == clean.targets.qa and s.targets.transcript == clean.targets.transcript
        video = [c for c in s.targets.captions if c.media == "video"]
        assert video == [c for c in clean.targets.captions if c.media == "video"] and video
        image = [c for c in s.targets.captions if c.media == "image"]
        assert [c.lang for c in image] == list(LANGS)
        assert s.text == next(c.text for c in image if c.lang == s.metadata["lang"])
        assert s.text != clean.text and not {c.text for c in image} & {c.text for c in clean.targets.captions}


def test_wrong_is_another_scene_and_unrelated_is_junk(sets: dict[str, dict[str, Sample]]) -> None:
    half = sets["half"]
    for key, kind in _noisy(half).items():
        s = half[key]
        texts = {c.lang: c.text for c in s.targets.captions if c.media == "image"}
        if kind == "wrong":  # a full, plausible scene description, of a different scene
            parsed = parse_shapes_caption(texts["en"], "en")
            own = parse_shapes_caption(s.metadata["captions"]["en"], "en")
            assert parsed and all(o["color"] and o["shape"] and o["size"] for o in parsed), texts["en"]
            assert parsed != own, (texts["en"], s.metadata["captions"]["en"])
            assert parse_shapes_caption(texts["zh"], "zh") == parsed, texts
        else:
            words = texts["en"].lower().replace(".", " ").replace("_", " ").replace("-", " ").split()
            assert not set(words) & set(SCENE_WORDS_EN), texts["en"]
            assert not any(w in texts["zh"] for w in SCENE_WORDS_ZH), texts["zh"]
            assert any("\u4e00" <= ch <= "\u9fff" for ch in texts["zh"]), texts["zh"]


def test_more_noise_contains_less_and_keeps_the_kind(sets: dict[str, dict[str, Sample]]) -> None:
    fifth, half = _noisy(sets["fifth"]), _noisy(sets["half"])
    assert fifth and len(fifth) < len(half)
    assert all(half.get(k) == v for k, v in fifth.items())
    for key in fifth:  # the same noisy text whatever P: it comes from the sample's own noise stream
        assert _hash(sets["fifth"][key]) == _hash(sets["half"][key])


def test_manifest_records_the_noise(tmp_path: Path, sets: dict[str, dict[str, Sample]]) -> None:
    m = make_dataset("shapes", tmp_path, n=N, seed=SEED, langs=LANGS, modalities=("text",), workers=2,
                     progress=False, caption_noise=0.5)
    kinds = list(_noisy(sets["half"]).values())
    assert m["args"]["caption_noise"] == 0.5
    assert m["caption_noise"] == {"p": 0.5, "noisy": len(kinds), "wrong": kinds.count("wrong"),
                                  "unrelated": kinds.count("unrelated")}
    assert json.loads((tmp_path / "manifest.json").read_text())["caption_noise"] == m["caption_noise"]
    texts = {s.id: s.text for s in read_webdataset(tmp_path / "train")}
    for key, s in sets["half"].items():  # other modalities off: the same noisy texts
        if s.metadata["split"] == "train":
            assert texts[key] == s.text


def test_bad_values_are_refused(tmp_path: Path) -> None:
    for bad in (-0.1, 1.5, float("nan"), True, "0.2"):
        with pytest.raises(InvalidInput, match="caption_noise"):
            make_dataset("shapes", tmp_path, n=5, modalities=("text",), progress=False, caption_noise=bad)
    with pytest.raises(InvalidInput, match="only shapes"):
        make_dataset("digits", tmp_path, n=5, modalities=("text",), progress=False, caption_noise=0.1)
    with pytest.raises(InvalidInput, match="caption_noise"):
        shapes.make_sample(0, "val", modalities=("text",), caption_noise="wrong")
    with pytest.raises(InvalidInput, match="caption_noise"):
        shapes.make_sample(0, "train", modalities=("text",), caption_noise="typo")


def test_cli_make_and_inspect_show_the_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d"
    args = ["make", "shapes", "--out", str(out), "--n", "20", "--modalities", "text", "--caption-noise", "0.25",
            "--workers", "1", "--no-progress"]
    assert data_main(args) == 0
    k = round(0.25 * make.split_counts(20)["train"])
    wrong = (k + 1) // 2
    assert f"caption noise: {k} train samples (p 0.25): wrong {wrong}, unrelated {k - wrong}" in capsys.readouterr().out
    assert data_main(["inspect", str(out), "--no-progress"]) == 0
    assert f"caption noise: {k} train samples" in capsys.readouterr().out
    assert data_main(["inspect", str(out), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["caption_noise"]["noisy"] == k
    assert data_main(["make", "shapes", "--out", str(out), "--n", "5", "--caption-noise", "2", "--no-progress"]) == 1
    assert "caption_noise" in capsys.readouterr().err
