"""The front door of a generative run: `polymodal.load(RUN)` is a `GenerativeModel` whose `generate` takes raw
inputs and equals the model's own batched generation; bad inputs name the field; `polymodal generate` prints
one answer or writes a data set's items as JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import genkit as g
import numpy as np
import pytest

import polymodal
from polymodal.commands import generate as generate_cmd
from polymodal.data.collate import collate
from polymodal.errors import InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.generative import GenerativeModel
from polymodal.train.trainer import Trainer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Any]]:
    root = tmp_path_factory.mktemp("front")
    samples = g.shape_samples(16)
    tests = g.shape_samples(4, split="test", start=100)
    data = g.write_data(root / "data", {"train": samples, "val": samples[:4], "test": tests}, ["image"])
    model_cfg = {"input": "image", "langs": ["en"], "encoder": g.ENCODER, "decoder": g.DECODER}
    Trainer(g.recipe("vqa", model_cfg, steps=3, batch_size=8), data, root / "run", progress=False).fit()
    return root / "run", data, tests


def test_load_gives_a_generator_equal_to_the_model(vqa_run: tuple[Path, Path, list[Any]]) -> None:
    run, _, tests = vqa_run
    gm = polymodal.load(run)
    assert isinstance(gm, GenerativeModel) and gm.task == "vqa" and gm.modalities == ("image",)
    questions = [s.targets.qa[0].question for s in tests]
    got = gm.generate(image=[s.image for s in tests], prompt=questions, max_new_tokens=8)
    batch = collate([s.replace(text=None) if s.text else s for s in tests], gm.transform)
    want = gm.model.generate(batch, questions, DecodingOptions(max_new_tokens=8))
    assert got == want and all(isinstance(t, str) for t in got)
    one = gm.generate(image=tests[0].image, prompt=questions[0], max_new_tokens=8)
    assert one == got[:1]
    assert polymodal.load_generator(run).task == "vqa"


def test_bad_inputs_name_the_field(vqa_run: tuple[Path, Path, list[Any]]) -> None:
    run, _, tests = vqa_run
    gm = polymodal.load_generator(run)
    with pytest.raises(InvalidInput) as err:
        gm.generate(image=tests[0].image)  # a VQA model needs the question
    assert err.value.field == "prompt"
    with pytest.raises(InvalidInput) as err:
        gm.generate(audio=(np.zeros(1000, np.float32), 16000), prompt="what?")
    assert err.value.field == "audio"
    with pytest.raises(InvalidInput) as err:
        gm.generate(image=[tests[0].image, tests[1].image], prompt=["a?", "b?", "c?"])
    assert err.value.field in ("generate", "prompt")
    with pytest.raises(InvalidInput) as err:
        gm.generate(image=tests[0].image, prompt="x?", num_beams=0)
    assert err.value.field == "num_beams"
    with pytest.raises(InvalidInput) as err:
        polymodal.load_generator("runs/does-not-exist")
    assert err.value.field == "arch"


def test_cli_one_input_and_a_data_set(vqa_run: tuple[Path, Path, list[Any]], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run, data, tests = vqa_run
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray(tests[0].image).save(png)
    q = tests[0].targets.qa[0].question
    assert generate_cmd.main([str(run), "--image", str(png), "--question", q, "--max-new-tokens", "8", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    gm = polymodal.load_generator(run)
    assert row["text"] == gm.generate(image=tests[0].image, prompt=q, max_new_tokens=8)[0] and row["task"] == "vqa"
    out = tmp_path / "answers.jsonl"
    assert generate_cmd.main([str(run), "--data", str(data), "--split", "test", "--out", str(out),
                              "--max-new-tokens", "8", "--limit", "5"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5 and all(r["prompt"] and r["references"] and r["task"] == "vqa" for r in rows)
    first = tests[0].targets.qa_for("image")[0]
    assert rows[0]["prompt"] == first.question and rows[0]["references"] == list(first.references)
    with pytest.raises(InvalidInput):
        generate_cmd.main([str(run)])  # no input at all
    with pytest.raises(InvalidInput):
        generate_cmd.main([str(run), "--image", str(png), "--data", str(data)])
