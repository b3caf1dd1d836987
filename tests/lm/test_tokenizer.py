"""The byte-level BPE: lossless on any text, fixed special ids, deterministic, and the transformers tokenizer
built from it encodes the same ids."""

from __future__ import annotations

import pytest

from polymodal.errors import ConfigError, InvalidInput
from polymodal.lm.tokenizer import (
    BOS,
    EOS,
    PAD,
    SEP,
    SPECIALS,
    TextTokenizer,
    tokenizer_from_config,
    train_bpe,
)

CORPUS = ["A small red circle on the left.", "A large blue square above a small green star.",
          "图片左边是一个红色的小圆形。", "蓝色的大正方形在绿色的小星形的上方。", "what color is the star?", "red"] * 20


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_bpe(CORPUS, 400)


@pytest.mark.parametrize("text", ["A red star.", "红色的星形", "emoji 🙂 and tabs\tand  spaces", "Ünïcödé", " lead"])
def test_round_trip_any_text(tok: TextTokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_specials_have_fixed_ids(tok: TextTokenizer) -> None:
    assert [tok.tok.token_to_id(s) for s in SPECIALS] == [PAD, BOS, EOS, SEP]
    # specials typed in text are plain text: a prompt cannot end the sequence or fake a separator
    assert not set(tok.encode("<s> text </s><sep><pad>")) & {PAD, BOS, EOS, SEP}
    assert tok.decode(tok.encode("a </s> b")) == "a </s> b"


def test_merges_learned_and_bounded(tok: TextTokenizer) -> None:
    assert 260 < tok.vocab_size <= 400
    assert len(tok.encode("A small red circle on the left.")) < len(b"A small red circle on the left.") / 2
    assert len(tok.encode("红色的小圆形")) < len("红色的小圆形".encode())


def test_decode_stops_at_eos_and_skips_specials(tok: TextTokenizer) -> None:
    ids = tok.encode("red star")
    assert tok.decode([BOS, *ids, EOS, *tok.encode("junk")]) == "red star"
    assert tok.decode([PAD, SEP, *ids]) == "red star"


def test_deterministic_and_json_round_trip(tok: TextTokenizer) -> None:
    again = train_bpe(CORPUS, 400)
    assert again.to_json() == tok.to_json()
    back = TextTokenizer.from_json(tok.to_json())
    assert back.encode("A large blue square 蓝色") == tok.encode("A large blue square 蓝色")


def test_hf_tokenizer_matches(tok: TextTokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    hf = tok.to_hf()
    hf.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("A small red circle.", "红色的小圆形", "x </s> y"):
        assert loaded(text, add_special_tokens=False).input_ids == tok.encode(text)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (PAD, BOS, EOS)


def test_config_forms(tok: TextTokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer_from_config({"vocab_size": 512}) is None
    inline = tokenizer_from_config({"vocab_size": 512, "json": tok.to_json()})
    assert inline is not None and inline.encode("red") == tok.encode("red")
    (tmp_path / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    from_path = tokenizer_from_config({"path": str(tmp_path)})
    assert from_path is not None and from_path.vocab_size == tok.vocab_size
    with pytest.raises(ConfigError, match="model.tokenizer.vocab"):
        tokenizer_from_config({"vocab": 3})
    with pytest.raises(ConfigError, match="not a tokenizer.json"):
        tokenizer_from_config({"json": "{nope"})
    with pytest.raises(ConfigError, match="cannot read"):
        tokenizer_from_config({"path": str(tmp_path / "missing.json")})


def test_bad_training_input() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(CORPUS, 100)
    with pytest.raises(InvalidInput, match="no text"):
        train_bpe(["", ""], 300)
