"""Sample validation (each field, errors name the field and source) and collate (missing modalities,
padding, masks) against a hand-written reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.data.collate import collate, raw_tensors
from polymodal.data.sample import MODALITIES, TIME_AXIS, Sample
from polymodal.errors import InvalidInput

IMG = np.zeros((4, 5, 3), np.uint8)
WAVE = np.zeros(100, np.float32)
SRC = "/data/x/a.txt"

BAD: list[tuple[str, dict, str]] = [
    ("dotted id", {"id": "a.b", "text": "x"}, "id"),
    ("empty id", {"id": "", "text": "x"}, "id"),
    ("id with space", {"id": "a b", "text": "x"}, "id"),
    ("no modality", {"id": "a"}, "id"),
    ("text not str", {"id": "a", "text": b"bytes"}, "text"),
    ("empty text", {"id": "a", "text": "  \n"}, "text"),
    ("image float", {"id": "a", "image": IMG.astype(np.float32)}, "image"),
    ("image 2-D", {"id": "a", "image": IMG[..., 0]}, "image"),
    ("image RGBA", {"id": "a", "image": np.zeros((4, 5, 4), np.uint8)}, "image"),
    ("image empty", {"id": "a", "image": np.zeros((0, 5, 3), np.uint8)}, "image"),
    ("image list", {"id": "a", "image": [[1, 2, 3]]}, "image"),
    ("video 3-D", {"id": "a", "video": IMG}, "video"),
    ("video int16", {"id": "a", "video": np.zeros((2, 4, 5, 3), np.int16)}, "video"),
    ("audio float64", {"id": "a", "audio": WAVE.astype(np.float64), "sample_rate": 16000}, "audio"),
    ("audio stereo", {"id": "a", "audio": np.zeros((100, 2), np.float32), "sample_rate": 16000}, "audio"),
    ("audio empty", {"id": "a", "audio": np.zeros(0, np.float32), "sample_rate": 16000}, "audio"),
    ("audio nan", {"id": "a", "audio": np.full(4, np.nan, np.float32), "sample_rate": 16000}, "audio"),
    ("no rate", {"id": "a", "audio": WAVE}, "sample_rate"),
    ("rate too low", {"id": "a", "audio": WAVE, "sample_rate": 100}, "sample_rate"),
    ("rate float", {"id": "a", "audio": WAVE, "sample_rate": 16000.0}, "sample_rate"),
    ("rate without audio", {"id": "a", "text": "x", "sample_rate": 16000}, "sample_rate"),
    ("metadata list", {"id": "a", "text": "x", "metadata": [1]}, "metadata"),
    ("metadata set", {"id": "a", "text": "x", "metadata": {"k": {1, 2}}}, "metadata"),
    ("metadata nan", {"id": "a", "text": "x", "metadata": {"k": float("nan")}}, "metadata"),
]


@pytest.mark.parametrize("kw,field", [(kw, f) for _, kw, f in BAD], ids=[name for name, _, _ in BAD])
def test_validation_names_field_and_source(kw: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Sample(**kw, source=SRC)
    assert info.value.field == field and info.value.source == SRC
    assert f"field '{field}'" in str(info.value) and SRC in str(info.value)


def test_valid_sample_properties() -> None:
    s = Sample("a", text="一只猫", audio=WAVE, sample_rate=8000, metadata={"标签": 1})
    assert s.modalities == ("audio", "text")
    assert s.duration == pytest.approx(100 / 8000)
    assert s.replace(text="dog").text == "dog"
    with pytest.raises(InvalidInput):
        s.replace(text="")


def reference_collate(samples: list[Sample]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Slow, obvious version: per modality, pad each present tensor along its time axis to the longest."""
    per = [raw_tensors(s) for s in samples]
    out = {}
    for m in MODALITIES:
        present = [d[m] for d in per if m in d]
        if not present:
            continue
        axis = TIME_AXIS[m]
        if axis is None:
            shape = list(present[0].shape)
        else:
            ax = axis % present[0].dim()
            shape = list(present[0].shape)
            shape[ax] = max(int(t.shape[ax]) for t in present)
        values = torch.zeros([len(samples)] + shape, dtype=present[0].dtype)
        mask = torch.zeros(len(samples), dtype=torch.bool)
        pad = None if axis is None else torch.zeros(len(samples), shape[axis % len(shape)], dtype=torch.bool)
        for i, d in enumerate(per):
            if m not in d:
                continue
            mask[i] = True
            t = d[m]
            index = tuple(slice(0, n) for n in t.shape)
            values[(i, *index)] = t
            if pad is not None:
                pad[i, : t.shape[axis % t.dim()]] = True
        out[m] = (values, mask, pad)
    return out


def test_collate_missing_modalities_and_padding(tiny_samples: list[Sample]) -> None:
    # equal image sizes so images collate; text/audio/video lengths differ and get padded
    samples = [s.replace(image=np.full((4, 5, 3), i, np.uint8)) if s.image is not None else s
               for i, s in enumerate(tiny_samples)]
    batch = collate(samples)
    ref = reference_collate(samples)
    assert batch.modalities == tuple(ref) == MODALITIES
    assert batch.ids == [s.id for s in samples] and len(batch) == len(samples)
    for m, (values, mask, pad) in ref.items():
        torch.testing.assert_close(batch.data[m], values, rtol=0, atol=0)
        assert torch.equal(batch.mask[m], mask)
        assert mask.tolist() == [m in s.modalities for s in samples]
        if pad is None:
            assert m not in batch.pad_mask and "pad_mask" not in batch.part(m)
        else:
            assert torch.equal(batch.pad_mask[m], pad) and torch.equal(batch.part(m)["pad_mask"], pad)
    assert batch.texts == [s.text for s in samples]


def test_collate_absent_modality_and_audio_time_axis_last() -> None:
    samples = [Sample("a", audio=np.ones(10, np.float32), sample_rate=16000), Sample("b", text="x"),
               Sample("c", audio=np.ones(4, np.float32), sample_rate=16000)]

    def mel_like(s: Sample) -> dict[str, torch.Tensor]:  # (n_mels, T) with T = len // 2
        out = dict(raw_tensors(s))
        if s.audio is not None:
            out["audio"] = torch.ones(3, len(s.audio) // 2)
        return out

    batch = collate(samples, mel_like)
    assert "image" not in batch.data and "video" not in batch.data
    assert batch.data["audio"].shape == (3, 3, 5)
    assert batch.pad_mask["audio"].tolist() == [[True] * 5, [False] * 5, [True] * 2 + [False] * 3]
    assert batch.data["audio"][2, :, 2:].abs().sum() == 0 and batch.data["audio"][1].abs().sum() == 0


def test_collate_image_shape_mismatch_and_empty() -> None:
    a = Sample("a", image=np.zeros((4, 5, 3), np.uint8), source="a.png")
    b = Sample("b", image=np.zeros((5, 5, 3), np.uint8), source="b.png")
    with pytest.raises(InvalidInput, match="resize") as info:
        collate([a, b])
    assert info.value.field == "image"
    with pytest.raises(InvalidInput):
        collate([])
