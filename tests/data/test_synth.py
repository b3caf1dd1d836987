"""Built-in data sets: determinism (any worker count), manifests, splits, held-out pairs, captions that
say what the picture shows (EN/ZH), videos that move the way their caption says, digits labels."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from polymodal.data.formats.webdataset import read_webdataset
from polymodal.data.synth import DATASETS, digits, make, make_dataset, shapes
from polymodal.errors import InvalidInput, NotFound

HAS_SPEECH = True
try:
    import espeakng_loader  # noqa: F401
except ImportError:  # pragma: no cover
    HAS_SPEECH = False
needs_speech = pytest.mark.skipif(not HAS_SPEECH, reason="needs the [speech] extra")

# Independent vocabularies for parsing captions back (not imported from the generator).
EN_SIZES = {"small": "small", "little": "small", "large": "large", "big": "large"}
EN_REL = {"to the left of": "left of", "left of": "left of", "to the right of": "right of", "right of": "right of",
          "above": "above", "over": "above", "below": "below", "under": "below", "beneath": "below"}
ZH_COLORS = {"红色": "red", "绿色": "green", "蓝色": "blue", "黄色": "yellow", "紫色": "purple", "橙色": "orange",
             "青色": "cyan", "粉色": "pink"}
ZH_SHAPES = {"圆形": "circle", "正方形": "square", "三角形": "triangle", "菱形": "diamond", "星形": "star", "十字形": "cross"}
ZH_REL = {"左边": "left of", "左侧": "left of", "右边": "right of", "右侧": "right of", "上方": "above", "上面": "above",
          "下方": "below", "下面": "below"}


def read_all(root: Path) -> dict[str, list]:
    return {s: list(read_webdataset(root / s)) for s in make.SPLITS}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes_dirs(tmp_path_factory):
    """The same small bilingual shapes set made with 1 and 2 workers (all modalities if speech works)."""
    mods = ("text", "image", "audio", "video") if HAS_SPEECH else ("text", "image", "video")
    out = {}
    for workers in (1, 2):
        d = tmp_path_factory.mktemp(f"shapes_w{workers}")
        make_dataset("shapes", d, n=24, seed=11, langs=("en", "zh"), modalities=mods, shard_size=7,
                     workers=workers, progress=False)
        out[workers] = d
    return out


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    """A larger, cheap text-only set for statistics (held-out pairs, caption parsing)."""
    d = tmp_path_factory.mktemp("shapes_text")
    make_dataset("shapes", d, n=400, seed=5, langs=("en", "zh"), modalities=("text",), progress=False)
    return read_all(d)


def test_same_arguments_give_identical_bytes_whatever_the_workers(shapes_dirs):
    a, b = file_bytes(shapes_dirs[1]), file_bytes(shapes_dirs[2])
    assert sorted(a) == sorted(b) and len(a) > 5
    assert [k for k in a if a[k] != b[k]] == []


def test_a_different_seed_gives_different_data(shapes_dirs, tmp_path):
    make_dataset("shapes", tmp_path, n=24, seed=12, langs=("en", "zh"), modalities=("text", "image"),
                 shard_size=7, workers=1, progress=False)
    texts = [s.text for s in read_all(tmp_path)["train"]]
    assert texts != [s.text for s in read_all(shapes_dirs[1])["train"]]


def test_manifest_schema_and_split_counts(shapes_dirs):
    root = shapes_dirs[1]
    m = json.loads((root / "manifest.json").read_text("utf-8"))
    assert (m["name"], m["version"], m["format"], m["seed"], m["n"]) == ("shapes", 2, "webdataset", 11, 24)
    assert m["langs"] == ["en", "zh"] and m["args"]["shard_size"] == 7
    assert set(m["splits"]) == {"train", "val", "test"}
    assert sum(s["count"] for s in m["splits"].values()) == 24
    samples = read_all(root)
    for split, info in m["splits"].items():
        assert len(samples[split]) == info["count"]
        assert all(s.metadata["split"] == split for s in samples[split])
    assert m["labels"]["heldout_pairs"] == [list(p) for p in shapes.HELDOUT_PAIRS]
    assert len(m["labels"]["colors"]) >= 6
    ids = sorted(s.id for ss in samples.values() for s in ss)
    assert ids == [f"shapes-{i:06d}" for i in range(24)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 24, 99, 1000])
def test_split_counts_sum_to_n_and_assignment_is_a_partition(n):
    counts = make.split_counts(n)
    assert sum(counts.values()) == n and min(counts.values()) >= 0
    assigned = make.assign_splits(n, seed=3)
    for split, count in counts.items():
        positions = sorted(p for s, p in assigned if s == split)
        assert positions == list(range(count))


def test_samples_have_every_requested_modality(shapes_dirs):
    for s in (s for ss in read_all(shapes_dirs[1]).values() for s in ss):
        assert s.image.shape == (64, 64, 3)
        assert s.video.shape == (shapes.VIDEO_FRAMES, shapes.VIDEO_SIZE, shapes.VIDEO_SIZE, 3)
        assert s.text == s.metadata["captions"][s.metadata["lang"]]
        assert s.metadata["video_caption"] == s.metadata["video_captions"][s.metadata["lang"]]
        if HAS_SPEECH:
            assert s.sample_rate == 22050 and s.duration > 0.5
            assert np.sqrt(np.mean(s.audio.astype(np.float64) ** 2)) > 0.02
            family = "cmn" if s.metadata["lang"] == "zh" else "en"
            assert s.metadata["voice"]["name"].split("+")[0].split("-")[0] == family


@needs_speech
def test_spoken_caption_length_follows_the_text(shapes_dirs):
    en = [s for ss in read_all(shapes_dirs[1]).values() for s in ss if s.metadata["lang"] == "en"]
    longest = max(en, key=lambda s: len(s.text))
    shortest = min(en, key=lambda s: len(s.text))
    assert len(longest.text) > 1.3 * len(shortest.text)
    assert longest.duration > shortest.duration


def test_heldout_pairs_never_in_train_or_val_and_present_in_test(text_only):
    heldout = {tuple(p) for p in shapes.HELDOUT_PAIRS}

    def pairs(s):
        return {(o["color"], o["shape"]) for o in s.metadata["objects"]}

    for split in ("train", "val"):
        assert all(not (pairs(s) & heldout) for s in text_only[split])
        assert not any(s.metadata["heldout"] for s in text_only[split])
    test = text_only["test"]
    flagged = [s for s in test if s.metadata["heldout"]]
    assert all(pairs(s) & heldout for s in flagged)
    assert len(flagged) >= 0.3 * len(test)
    seen = {(s.metadata["labels"]["color"], s.metadata["labels"]["shape"]) for s in flagged}
    assert len(seen & heldout) >= 3


def parse_en(text: str) -> tuple[Counter, str | None, str]:
    t = text.lower()
    sizes = "|".join(EN_SIZES)
    colors = "|".join(shapes.COLORS)
    kinds = "|".join(shapes.SHAPES)
    objs = Counter((EN_SIZES[a], b, c) for a, b, c in re.findall(rf"\b({sizes}) ({colors}) ({kinds})\b", t))
    rel = next((EN_REL[r] for r in sorted(EN_REL, key=len, reverse=True) if f" {r} " in t), None)
    return objs, rel, t


def parse_zh(text: str) -> tuple[Counter, str | None]:
    colors, kinds = "|".join(ZH_COLORS), "|".join(ZH_SHAPES)
    found = Counter()
    for m in re.finditer(rf"(?:(小|大)的)?({colors})(?:的)?(小|大)?({kinds})", text):
        size = {"小": "small", "大": "large"}[m.group(1) or m.group(3)]
        found[(size, ZH_COLORS[m.group(2)], ZH_SHAPES[m.group(4)])] += 1
    rel = next((ZH_REL[r] for r in ZH_REL if f"的{r}" in text), None)
    return found, rel


def test_captions_say_what_the_metadata_says(text_only):
    samples = [s for ss in text_only.values() for s in ss]
    positions_en = {"center": ("center", "middle"), "left": ("on the left",), "right": ("on the right",),
                    "top": ("at the top",), "bottom": ("at the bottom",)}
    for s in samples:
        meta = s.metadata
        expect = Counter((o["size"], o["color"], o["shape"]) for o in meta["objects"])
        objs, rel, low = parse_en(meta["captions"]["en"])
        assert objs == expect, meta["captions"]["en"]
        zobjs, zrel = parse_zh(meta["captions"]["zh"])
        assert zobjs == expect, meta["captions"]["zh"]
        assert meta["labels"] == {"color": meta["objects"][0]["color"], "shape": meta["objects"][0]["shape"]}
        if meta["relation"] is None:
            pos = meta["objects"][0]["position"]
            assert any(p in low for p in positions_en.get(pos, (pos + " corner",))), low
        else:
            assert rel == meta["relation"] and zrel == meta["relation"], meta["captions"]
    langs = Counter(s.metadata["lang"] for s in samples)
    assert langs["en"] > 100 and langs["zh"] > 100


def test_identical_captions_are_rare(text_only):
    texts = [s.metadata["captions"]["en"] for s in text_only["train"]]
    assert len(set(texts)) >= 0.95 * len(texts)


def test_chinese_captions_survive_the_shards(shapes_dirs):
    zh = [s for ss in read_all(shapes_dirs[1]).values() for s in ss if s.metadata["lang"] == "zh"]
    assert zh, "expected some Chinese samples with langs=('en', 'zh')"
    for s in zh:
        index = s.metadata["index"]
        direct = shapes.make_sample(index, s.metadata["split"], seed=11, langs=("en", "zh"), modalities=("text",))
        assert s.text == direct.text
        assert re.search(r"[\u4e00-\u9fff]", s.text)
        assert re.search(r"[\u4e00-\u9fff]", s.metadata["video_caption"])


def object_centroids(video: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(T, 2) centroid (x, y) of pixels close to the object's color, per frame."""
    dist = np.linalg.norm(video.astype(np.float64) - np.array(rgb, dtype=np.float64), axis=-1)
    out = []
    for mask in dist < 50:
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def test_video_object_moves_in_the_stated_direction(shapes_dirs):
    checked = 0
    for s in (s for ss in read_all(shapes_dirs[1]).values() for s in ss):
        objs = s.metadata["objects"]
        if len(objs) == 2 and objs[0]["color"] == objs[1]["color"]:
            continue  # same color: pixels alone cannot tell the two objects apart
        c = object_centroids(s.video, shapes.COLORS[objs[0]["color"]])
        dx, dy = shapes.DIRECTIONS[s.metadata["motion"]]
        along = (c[-1] - c[0]) @ np.array([dx, dy], dtype=np.float64)
        across = abs((c[-1] - c[0]) @ np.array([dy, dx], dtype=np.float64))
        steps = np.diff(c, axis=0) @ np.array([dx, dy], dtype=np.float64)
        assert along > 0.6 * shapes.MOTION * shapes.VIDEO_SIZE and across < 1.0, s.id
        assert (steps > 0).all(), s.id
        assert re.search(rf"\b{s.metadata['motion']}", s.metadata["video_captions"]["en"].lower())
        zh_dir = {"left": "左", "right": "右", "up": "上", "down": "下"}[s.metadata["motion"]]
        assert re.search(f"[向往]{zh_dir}", s.metadata["video_captions"]["zh"])
        checked += 1
    assert checked >= 15


def test_omitted_modalities_are_not_generated(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("speech synthesised although audio was not requested")

    monkeypatch.setattr(shapes.speech, "synthesize", boom)
    m = make_dataset("shapes", tmp_path, n=10, modalities=("image", "text"), workers=1, progress=False)
    assert m["modalities"] == ["image", "text"]
    for s in (s for ss in read_all(tmp_path).values() for s in ss):
        assert s.audio is None and s.video is None and s.image is not None
        assert "voice" not in s.metadata


def test_rerun_replaces_the_previous_dataset(tmp_path):
    make_dataset("shapes", tmp_path, n=30, modalities=("text",), shard_size=4, workers=1, progress=False)
    make_dataset("shapes", tmp_path, n=10, modalities=("text",), shard_size=4, workers=1, progress=False)
    fresh = tmp_path.parent / (tmp_path.name + "_fresh")
    make_dataset("shapes", fresh, n=10, modalities=("text",), shard_size=4, workers=1, progress=False)
    assert file_bytes(tmp_path) == file_bytes(fresh)


def test_bad_arguments_are_typed_errors(tmp_path):
    assert DATASETS == ["shapes", "digits"]
    with pytest.raises(NotFound, match="nosuch"):
        make_dataset("nosuch", tmp_path, n=3)
    with pytest.raises(InvalidInput, match="langs"):
        make_dataset("shapes", tmp_path, n=3, langs=("fr",))
    with pytest.raises(InvalidInput, match="'n'"):
        make_dataset("shapes", tmp_path, n=0)
    with pytest.raises(InvalidInput, match="modalities"):
        make_dataset("digits", tmp_path, n=3, modalities=("video",))
    with pytest.raises(InvalidInput, match="modalities"):
        make_dataset("shapes", tmp_path, n=3, modalities=("smell",))


# ------------------------------------------------------------------------------------------------ digits

@needs_speech
def test_digits_with_speech(tmp_path):
    from sklearn.datasets import load_digits

    ref = load_digits()
    m = make_dataset("digits", tmp_path, n=20, seed=2, langs=("en", "zh"), workers=1, progress=False)
    assert m["modalities"] == ["audio", "image", "text"] and m["labels"]["classes"][7] == "seven"
    samples = [s for ss in read_all(tmp_path).values() for s in ss]
    assert len(samples) == 20
    for s in samples:
        meta = s.metadata
        assert meta["label"] == int(ref.target[meta["image_index"]])
        assert s.text == (meta["label_name"] if meta["lang"] == "en" else meta["label_zh"])
        assert np.sqrt(np.mean(s.audio.astype(np.float64) ** 2)) > 0.02
        assert meta["voice"]["name"].startswith("cmn" if meta["lang"] == "zh" else "en")
        # the picture is that scikit-learn image: pooled back to 8x8 it correlates with the original
        pooled = s.image[:, :, 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
        assert np.corrcoef(pooled.ravel(), ref.images[meta["image_index"]].ravel())[0, 1] > 0.9


def test_digits_split_by_image_and_reuse_beyond_1797(tmp_path):
    m = make_dataset("digits", tmp_path, n=1900, seed=4, modalities=("text", "image"), shard_size=500,
                     workers=1, progress=False)
    samples = read_all(tmp_path)
    assert sum(len(v) for v in samples.values()) == 1900 == sum(v["count"] for v in m["splits"].values())
    used = {split: Counter(s.metadata["image_index"] for s in ss) for split, ss in samples.items()}
    assert not (set(used["train"]) & set(used["val"])) and not (set(used["train"]) & set(used["test"]))
    assert not (set(used["val"]) & set(used["test"]))
    assert max(used["train"].values()) == 2  # 1520 train samples from 1438 train images
    targets = digits.load_digits()[1]
    assert all(s.metadata["label"] == targets[s.metadata["image_index"]] for ss in samples.values() for s in ss)
