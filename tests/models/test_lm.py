"""``arch: "lm"``: the causal LM on the targets' text. Checked against transformers itself (the saved HF folder
computes the same logits and generates the same tokens), batched == one-by-one decoding, the streamer, seeded
sampling, and a trainer run that reloads to the same generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import genkit as g
import pytest
import torch

from polymodal.errors import ConfigError, InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.lm.tokenizer import BOS, EOS, SEP
from polymodal.models import build_model, load_model
from polymodal.models.gen_batch import encode_prompt
from polymodal.models.lm import CausalLM
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")

LM = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64, "max_len": 64}
PROMPTS = ["A big", None, "What color is the star?<sep>", "两个", "Th"]


@pytest.fixture(scope="module")
def samples() -> list[Any]:
    return g.shape_samples(12, langs=("en", "zh"), modalities=("text",))


@pytest.fixture(scope="module")
def lm(samples: list[Any]) -> CausalLM:
    torch.manual_seed(0)
    model = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM}), samples)
    g.train_steps(model, g.batch_for(model, samples), 8, lr=1e-2)  # a little training: no flat logits
    return model


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="kv_heads"):
        build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "kv_heads": 3})
    with pytest.raises(ConfigError, match="langs"):
        build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "langs": []})
    with pytest.raises(ConfigError, match="layers"):
        build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "layers": 0})


def test_corpus_and_sequences_cover_captions_questions_and_answers(samples: list[Any]) -> None:
    model = build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "texts_per_sample": None})
    t = samples[0].targets
    corpus = model.corpus(samples[:1])
    assert {c.text for c in t.captions} | {q.question for q in t.qa} | {q.answer for q in t.qa} == set(corpus)
    assert any("\u4e00" <= ch <= "\u9fff" for text in corpus for ch in text)  # Chinese too
    en = build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "langs": ["en"]})
    assert all(not any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in en.corpus(samples))
    model.fit_data(samples)
    tok = model.tokenizer
    prefixes, outs = model.sequences([t])
    q = t.qa[0]
    assert [BOS] in prefixes and tok.encode(q.question) + [SEP] + tok.encode(q.answer) + [EOS] in outs
    assert tok.encode(t.captions[0].text) + [EOS] in outs and len(outs) == len(t.captions) + len(t.qa)
    assert encode_prompt(tok, f"{q.question}<sep>{q.answer}") == tok.encode(q.question) + [SEP] + tok.encode(q.answer)


def test_training_draws_texts_per_sample_reproducibly(samples: list[Any]) -> None:
    model = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM, "texts_per_sample": 2}), samples)
    torch.manual_seed(3)
    a = model.sequences([s.targets for s in samples])
    torch.manual_seed(3)
    assert model.sequences([s.targets for s in samples]) == a and len(a[1]) == 2 * len(samples)
    b = model.sequences([s.targets for s in samples])
    assert b != a  # a new draw each step


def test_loss_falls(samples: list[Any]) -> None:
    torch.manual_seed(0)
    model = g.fitted(build_model("lm", {"tokenizer": g.TOKENIZER, **LM}), samples)
    losses = g.train_steps(model, g.batch_for(model, samples), 12, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0]


def test_saved_hf_folder_matches_ours(lm: CausalLM, tmp_path: Path) -> None:
    lm.save_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "A big red star is above a small cyan cross."
    assert tok(text)["input_ids"] == lm.tokenizer.encode(text)
    ids = torch.tensor([[BOS, *lm.tokenizer.encode(text)]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, lm.lm(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    ours = lm.generate(None, ["A big"], DecodingOptions(max_new_tokens=12))
    start = torch.tensor([[BOS, *tok("A big")["input_ids"]]])
    theirs = hf.generate(start, max_new_tokens=12, do_sample=False)
    assert tok.decode(theirs[0, start.shape[1]:], skip_special_tokens=True) == ours[0]


@pytest.mark.parametrize("opts", [{}, {"use_cache": False}, {"num_beams": 3}, {"repetition_penalty": 1.3}])
def test_batched_equals_one_by_one(lm: CausalLM, opts: dict[str, Any]) -> None:
    o = DecodingOptions(max_new_tokens=10, **opts)
    together = lm.generate(None, PROMPTS, o)
    alone = [lm.generate(None, [p], o)[0] for p in PROMPTS]
    assert together == alone


def test_streamer_sees_every_new_token(lm: CausalLM) -> None:
    rec = g.Recorder()
    out = lm.generate(None, PROMPTS[:3], DecodingOptions(max_new_tokens=8), streamer=rec)
    assert rec.ended == 1 and len(rec.puts[0]) == 3  # the prompts first, then (B,) per step
    assert [lm.tokenizer.decode(row) for row in rec.new_tokens()] == out
    with pytest.raises(InvalidInput, match="num_beams"):
        lm.generate(None, ["A"], DecodingOptions(num_beams=2), streamer=g.Recorder())


def test_seeded_sampling_and_stop_strings(lm: CausalLM) -> None:
    o = DecodingOptions(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7, max_new_tokens=16)
    state = torch.get_rng_state()
    a = lm.generate(None, ["A", "A", "A"], o)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert lm.generate(None, ["A", "A", "A"], o) == a
    others = {tuple(lm.generate(None, ["A", "A", "A"], DecodingOptions(**{**o.to_dict(), "seed": s,
                                                                            "stop": ()})))
              for s in range(3)}
    assert len(others) > 1
    full = lm.generate(None, ["A"], DecodingOptions(max_new_tokens=16))[0]
    cut = full.strip()[:3]
    assert lm.generate(None, ["A"], DecodingOptions(max_new_tokens=16, stop=(cut,)))[0] == full[:full.find(cut)]


def test_prompt_errors(lm: CausalLM) -> None:
    with pytest.raises(InvalidInput, match="prompt"):
        lm.generate(None, None)
    with pytest.raises(InvalidInput, match="at most 64"):
        lm.generate(None, ["word " * 80])


def test_trainer_run_reloads_to_the_same_generations(samples: list[Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = g.write_data(tmp_path / "data", {"train": samples, "val": samples[:4]}, ["text"])
    with g.attach_targets(monkeypatch):
        result = Trainer(g.recipe("lm", LM, steps=3), data, tmp_path / "run", progress=False).fit()
    assert result.step == 3 and result.val_loss is not None
    model, _, cfg = load_model(tmp_path / "run")
    assert cfg["model"]["tokenizer"]["json"] and (tmp_path / "run" / "hf" / "config.json").is_file()
    o = DecodingOptions(max_new_tokens=8)
    assert model.generate(None, PROMPTS, o) == [model.generate(None, [p], o)[0] for p in PROMPTS]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    ids = torch.tensor([[BOS, 40, 41, 42]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model.lm(input_ids=ids).logits)
