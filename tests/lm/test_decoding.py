"""Decoding options: validation names the field; the mapping onto transformers' generate; stop strings."""

from __future__ import annotations

import pytest

from polymodal.errors import InvalidInput
from polymodal.lm.decoding import MAX_NEW_TOKENS, DecodingOptions, cut_at_stop


@pytest.mark.parametrize(("kw", "field"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    ({"num_beams": 0}, "num_beams"), ({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"), ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"stop": ("",)}, "stop"), ({"seed": -1}, "seed"), ({"do_sample": "yes"}, "do_sample"),
    ({"do_sample": True, "num_beams": 2}, "num_beams"), ({"max_new_tokens": True}, "max_new_tokens"),
])
def test_bad_options_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        DecodingOptions(**kw)  # type: ignore[arg-type]
    assert err.value.field == field


def test_from_dict() -> None:
    o = DecodingOptions.from_dict({"num_beams": 3, "stop": ["."], "top_k": None})
    assert o.num_beams == 3 and o.stop == (".",) and not o.streamable
    assert DecodingOptions.from_dict({"stop": "\n"}).stop == ("\n",)
    with pytest.raises(InvalidInput) as err:
        DecodingOptions.from_dict({"beams": 3})
    assert err.value.field == "beams"
    assert DecodingOptions.from_dict(o.to_dict()) == o


def test_generate_kwargs() -> None:
    greedy = DecodingOptions().generate_kwargs(0, 2)
    assert greedy["do_sample"] is False and "temperature" not in greedy and greedy["eos_token_id"] == 2
    s = DecodingOptions(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.2).generate_kwargs(0, 2)
    assert (s["temperature"], s["top_p"], s["top_k"], s["repetition_penalty"]) == (0.7, 0.9, 0, 1.2)


def test_cut_at_stop() -> None:
    assert cut_at_stop("a red star. and more", (".",)) == "a red star"
    assert cut_at_stop("a red star", ("?", "!")) == "a red star"
    assert cut_at_stop("x?y.z", (".", "?")) == "x"
