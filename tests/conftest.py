"""Shared tiny fixtures: a handful of small samples covering every modality mix, English and Chinese; and
the `load_bench` fixture for tests of the scripts in bench/ (not a package)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from polymodal.data.sample import Sample

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"

# 16-bit PCM round trip: within one LSB.
AUDIO_TOL = 1 / 32767


def _load_bench(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_samples(n: int = 6, seed: int = 0) -> list[Sample]:
    """n samples cycling through modality mixes; sizes vary so padding and shape stats are exercised."""
    rng = np.random.default_rng(seed)
    texts = ["a red circle left of a blue square", "一个红色的圆在蓝色方块的左边", "three", "移动的三角形 moves up"]
    out = []
    for i in range(n):
        kind = i % 4
        kw: dict = {"id": f"s{i:03d}", "metadata": {"i": i, "label": ["圆", "square"][i % 2], "split": "train"}}
        if kind != 2:
            kw["text"] = texts[(i // 2) % len(texts)] if kind != 1 else texts[1] + f" {i}"
        if kind in (0, 2, 3):
            kw["image"] = rng.integers(0, 256, (4 + i % 3, 5, 3), dtype=np.uint8)
        if kind in (1, 3):
            kw["audio"] = rng.uniform(-0.9, 0.9, 80 + 16 * i).astype(np.float32)
            kw["sample_rate"] = 16000 if i % 3 else 8000
        if kind in (2, 3):
            kw["video"] = rng.integers(0, 256, (2 + i % 2, 3, 4, 3), dtype=np.uint8)
        out.append(Sample(**kw))
    return out


def assert_same(a: Sample, b: Sample) -> None:
    """Equal up to 16-bit audio quantization; `source` is not compared."""
    assert a.id == b.id and a.text == b.text and a.metadata == b.metadata, (a.id, b.id)
    assert a.targets == b.targets, a.id
    for m in ("image", "video"):
        x, y = getattr(a, m), getattr(b, m)
        assert (x is None) == (y is None), (a.id, m)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert (a.audio is None) == (b.audio is None) and a.sample_rate == b.sample_rate
    if a.audio is not None:
        assert a.audio.shape == b.audio.shape
        assert np.abs(a.audio - b.audio).max() <= AUDIO_TOL


@pytest.fixture
def tiny_samples() -> list[Sample]:
    return make_tiny_samples()


@pytest.fixture
def make_samples() -> Callable[..., list[Sample]]:
    return make_tiny_samples


@pytest.fixture
def same_sample() -> Callable[[Sample, Sample], None]:
    return assert_same


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run far faster on one thread than on two contended ones (2-core machines)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """``load_bench("fusion_table")``: a script of bench/ (not a package) imported as a module."""
    return _load_bench
