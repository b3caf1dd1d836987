"""Speech into an mllm (Qwen-Audio style): spoken questions of `data make shapes --conversations
--spoken-questions` reach the LM as pooled Whisper-encoder soft tokens instead of their text; the chat front takes
audio parts the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from polymodal.data.formats import open_dataset
from polymodal.data.synth import make_dataset
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config
from polymodal.lm.decoding import DecodingOptions
from polymodal.models import build_model
from polymodal.models.chat import ChatMessage
from polymodal.models.mllm_front import MLLMChat
from polymodal.models.mllm_seq import Segment

pytest.importorskip("transformers")
pytest.importorskip("espeakng_loader")

AUDIO = {"slots": 4, "d_model": 32, "layers": 1, "heads": 2, "ffn_dim": 64, "n_mels": 40, "n_fft": 400,
         "hop_length": 320, "chunk_seconds": 4}


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    out = tmp_path_factory.mktemp("spoken") / "data"
    make_dataset("shapes", out, n=12, seed=0, langs=["en"], modalities=["image", "text"], conversations=True,
                 spoken_questions=0.5, progress=False)
    samples = list(open_dataset(out, split="train"))
    assert any(c.spoken for s in samples for c in s.targets.conversations)
    return samples


def built(samples: list[Any]) -> Any:
    torch.manual_seed(0)
    m = build_model("mllm", {
        "bridge": "llava", "data": ["conversations"], "langs": ["en"], "tokenizer": {"vocab_size": 320},
        "vision": {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "lm": {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "train": "full"},
        "audio": AUDIO, "max_len": 192, "sequences_per_sample": 8})
    m.fit_data(samples)
    return m


def batch_of(m: Any, samples: list[Any]) -> Any:
    from polymodal.data.collate import collate

    tf = SampleTransform.from_dict(transform_config(m.preprocess(), {})).eval()
    return collate(samples, lambda s: {k: v for k, v in tf(s).items() if k in m.modalities}), tf


def test_spoken_questions_train_through_the_audio_tower(spoken: list[Any]) -> None:
    m = built(spoken)
    assert m.modalities == ("image", "audio") and m.config["audio"]["hf_config"]["model_type"] == "whisper"
    batch, _ = batch_of(m, spoken)
    assert batch.data["audio"].shape[1:] == (40, 4 * 16000 // 320)
    m.train()
    rows = m.training_rows(batch)
    heard = [s for r in rows for s in r if s.audio is not None]
    assert heard and all(s.turns[0][0] == "" for s in heard)  # the spoken question's text is not shown
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    changed = {k for k, v in m.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("audio.proj") for k in changed)
    assert not any(k.startswith("audio.encoder") for k in changed)  # frozen unless audio.train


def test_the_clip_changes_the_answer_and_chat_takes_audio_parts(spoken: list[Any]) -> None:
    m = built(spoken).eval()
    batch, tf = batch_of(m, spoken)
    with_audio = [i for i, s in enumerate(spoken) if s.audio is not None][:2]
    assert len(with_audio) == 2
    i, j = with_audio
    rows = [[Segment(i, [("", "a red star")], audio=i)], [Segment(i, [("", "a red star")], audio=j)]]
    with torch.no_grad():
        a, ids, _ = m.sequence_logits(rows, batch.data["image"], batch.data["audio"])
    assert not torch.allclose(a[0], a[1])  # same picture and words, another clip
    chat = MLLMChat(m, tf, torch.device("cpu"))
    s = spoken[i]
    opts = DecodingOptions(max_new_tokens=5)
    got = chat.chat([[ChatMessage("user", "", images=(s.image,), audio=((s.audio, s.sample_rate),))]], opts)
    want = m.decode([[Segment(0, [("", None)], audio=0)]], chat.pixels([s.image]), opts,
                    sounds=chat.sounds([(s.audio, s.sample_rate)]))
    assert got == want
    assert chat.count_tokens([ChatMessage("user", "hi", audio=((s.audio, s.sample_rate),))]) >= AUDIO["slots"] + 2


def test_audio_is_for_llava_and_clear_when_missing(spoken: list[Any], tmp_path: Path) -> None:
    from polymodal.errors import ConfigError, InvalidInput

    with pytest.raises(ConfigError, match="llava"):
        build_model("mllm", {"bridge": "flamingo", "audio": AUDIO, "langs": ["en"]})
    m = built(spoken)
    with pytest.raises(InvalidInput, match="audio"):
        m.sequence_logits([[Segment(None, [("", "x")], audio=0)]], None, None)
