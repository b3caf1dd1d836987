"""`polymodal chat RUN`: one message with --json (the reply, usage and timing; the reply equals the chat model's and
`GenerativeModel.generate`'s), a scripted conversation on stdin (/image, /reset, /exit, a bad file that does not
end the conversation, streamed replies), and the decoding flags, which are `polymodal generate`'s."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_chat_model import BLUE, Q1, Q2, RED, build_run, user

import polymodal
from polymodal.commands import chat as chat_cmd
from polymodal.commands import generate as generate_cmd
from polymodal.commands import main as polymodal_main
from polymodal.errors import InvalidInput
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.chat import ChatMessage, load_chat_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("chat_cli")
    red, blue = root / "red.png", root / "blue.png"
    Image.fromarray(RED).save(red)
    Image.fromarray(BLUE).save(blue)
    return build_run(root / "vqa"), red, blue


def test_one_message_as_json(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, red, _ = files
    assert chat_cmd.main([str(run), "--message", Q1, "--image", str(red), "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = polymodal.load_generator(run).generate(image=RED, prompt=Q1, max_new_tokens=6)[0].strip()
    assert out["reply"] == want and out["model"] == str(run) and want
    usage = out["usage"]
    assert usage["prompt_tokens"] == load_chat_model(run).count_tokens([user(Q1, RED)])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]
    assert out["finish_reason"] in ("stop", "length") and set(out["timing"]) >= {"load_s", "reply_s"}
    # plain text, and streamed: the same reply
    assert chat_cmd.main([str(run), "-m", Q1, "--image", str(red), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert polymodal_main(["chat", str(run), "-m", Q1, "--image", str(red), "--max-new-tokens", "6",
                           "--stream"]) == 0
    assert capsys.readouterr().out == want + "\n"


def test_a_conversation_on_stdin(files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    run, red, blue = files
    script = "\n".join([f"/image {red}", Q1, Q2, f"/image {blue}", "", Q1, f"/image {red}x", Q2, "/reset", Q1,
                        f"/image {blue}", Q2, "/exit", "never read"]) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert chat_cmd.main([str(run), "--max-new-tokens", "6", "--system", "be brief"]) == 0
    captured = capsys.readouterr()
    chat = load_chat_model(run)
    opts = DecodingOptions(max_new_tokens=6)

    def answer(question: str, image: np.ndarray) -> str:
        return chat.chat([[ChatMessage("system", "be brief"), user(question, image)]], opts)[0]

    # red: Q1, Q2 (the same picture); blue: Q1; a missing file: an error, no reply; after /reset no picture: an
    # error; blue again: Q2
    assert captured.out.splitlines() == [answer(Q1, RED), answer(Q2, RED), answer(Q1, BLUE), answer(Q2, BLUE)]
    assert captured.err.count("error:") == 2 and "reads an image" in captured.err and "x" in captured.err
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {red}\n{Q1}\n"))   # the end of input ends it too
    assert chat_cmd.main([str(run), "--max-new-tokens", "6", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["reply"] == chat.chat([[user(Q1, RED)]], opts)[0] and "usage" in line


def test_flags(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def decoding(p: argparse.ArgumentParser) -> list[tuple[tuple[str, ...], object]]:
        (group,) = [g for g in p._action_groups if g.title == "decoding"]
        return [(tuple(a.option_strings), a.default) for a in group._group_actions]

    assert decoding(chat_cmd._parser()) == decoding(generate_cmd._parser())
    run, red, _ = files
    with pytest.raises(InvalidInput) as err:
        chat_cmd.main([str(run), "--image", str(red)])   # an image without --message
    assert err.value.field == "--message"
    assert polymodal_main(["chat", str(run), "-m", Q1, "--image", str(red) + "x"]) == 1
    assert polymodal_main(["chat", str(run.parent / "nope"), "-m", Q1]) == 1
    assert "not a run that can chat" in capsys.readouterr().err
    assert polymodal_main(["chat", str(run), "-m", Q1, "--image", str(red), "--beams", "2", "--stream",
                           "--max-new-tokens", "4"]) == 0   # beam search does not stream: the reply at the end
    assert capsys.readouterr().out.strip() == load_chat_model(run).chat(
        [[user(Q1, RED)]], DecodingOptions(max_new_tokens=4, num_beams=2))[0]
