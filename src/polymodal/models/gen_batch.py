"""Sequence building and decoding shared by the generative archs (`lm`, `captioner`, `vqa`).

Training sequences are ``prefix + target``: the prefix is read (``<s>``, a language tag, a question and
``<sep>``), the target is predicted (a caption or an answer, then ``</s>``). `teacher_forcing` pads them on the
right and marks which next-token predictions count; `token_loss` is the cross-entropy over exactly those.

Decoding goes through transformers' ``generate`` (`hf_generate`): prompts are padded on the *left* with an
attention mask and explicit position ids (``cumsum(mask) - 1``), so a batch decodes exactly as its rows one by
one (GPT-2 would otherwise give a padded row shifted positions); the streamer protocol, beam search, sampling
and the KV-cache switch are transformers'; ``seed`` draws from a private RNG (the global one is untouched);
``stop`` strings cut the decoded text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions, cut_at_stop
from ..lm.tokenizer import EOS, PAD, SEP, SPECIALS, TextTokenizer
from .generator import TokenStreamer, pad_sequences

SEP_TEXT = SPECIALS[SEP]  # "<sep>" written in a prompt string becomes the separator token


def encode_prompt(tok: TextTokenizer, text: str) -> list[int]:
    """``text`` as ids, each literal ``<sep>`` in it as the separator token (the LM's question/answer
    boundary: ``"What color is the star?<sep>"`` asks for the answer)."""
    out: list[int] = []
    for i, part in enumerate(text.split(SEP_TEXT)):
        if i:
            out.append(SEP)
        if part:
            out.extend(tok.encode(part))
    return out


def pick(counts: Sequence[int], k: int, training: bool) -> list[list[int]]:
    """Up to ``k`` distinct indices in ``range(n)`` per row with ``n`` candidates. Training draws them from the
    global torch RNG (which the trainer seeds and checkpoints) in one call; evaluation takes the first ``k``,
    so a validation pass consumes no randomness."""
    if not training or not counts:
        return [list(range(min(n, k))) for n in counts]
    u = torch.rand(len(counts), max(max(counts), 1))
    return [u[i, :n].argsort()[:k].tolist() for i, n in enumerate(counts)]


def teacher_forcing(prefixes: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], max_len: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids (B, L), attention mask (B, L), loss mask (B, L-1)) for sequences ``prefix + target`` cut to
    ``max_len`` tokens; ``loss_mask[b, t]`` says whether predicting ``ids[b, t+1]`` counts (target tokens)."""
    seqs, starts = [], []
    for p, t in zip(prefixes, targets, strict=True):
        seq = (list(p) + list(t))[:max_len]
        seqs.append(seq)
        starts.append(min(len(p), len(seq)))
    ids, mask = pad_sequences(seqs, PAD)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    lengths = torch.tensor([len(s) for s in seqs]).unsqueeze(1)
    first = torch.tensor(starts).unsqueeze(1)
    counted = (pos >= first) & (pos < lengths)  # positions holding target tokens
    return ids.to(device), mask.to(device), counted[:, 1:].to(device)


def token_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over the counted positions (0 with a gradient when none count), and
    logs: token accuracy and the number of tokens."""
    pred = logits[:, :-1].float()
    gold = ids[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1), reduction="none").view_as(gold)
    weight = loss_mask.to(ce.dtype)
    n = int(loss_mask.sum())
    loss = (ce * weight).sum() / max(n, 1)
    with torch.no_grad():
        right = ((pred.argmax(-1) == gold) & loss_mask).sum()
    return loss, {"token_acc": float(right) / max(n, 1), "tokens": float(n)}


def left_padded(prompts: Sequence[Sequence[int]], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of prompts padded on the left; positions count real tokens only."""
    ids, mask = pad_sequences(prompts, PAD, left=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with the torch RNG seeded to ``seed`` and restore it after (nothing without a seed)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def hf_generate(model: Any, tok: TextTokenizer, prompt_len: int, max_positions: int | None,
                options: DecodingOptions | None, streamer: TokenStreamer | None, **inputs: Any) -> list[str]:
    """Decode with ``model.generate(**inputs)`` (prompt ids given left-padded in ``inputs``, ``prompt_len``
    wide) and return each row's new text, cut at the first stop string."""
    opts = options or DecodingOptions()
    if streamer is not None and not opts.streamable:
        raise InvalidInput("streaming needs num_beams = 1 (a beam's text is known only at the end)",
                           field="num_beams")
    kw = opts.generate_kwargs(PAD, EOS)
    if max_positions is not None:
        room = max_positions - prompt_len
        if room < 1:
            raise InvalidInput(f"the prompt is {prompt_len} tokens, the model reads at most {max_positions}",
                               field="prompt")
        kw["max_new_tokens"] = min(kw["max_new_tokens"], room)
    device = next(model.parameters()).device
    with seeded(opts.seed, device), torch.no_grad():
        out = model.generate(**inputs, streamer=streamer, **kw)
    return [cut_at_stop(tok.decode(row), opts.stop) for row in out[:, prompt_len:].tolist()]


__all__ = ["SEP_TEXT", "encode_prompt", "hf_generate", "left_padded", "pick", "seeded", "teacher_forcing",
           "token_loss"]
