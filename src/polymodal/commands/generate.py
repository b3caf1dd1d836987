"""`polymodal generate RUN`: captions, answers, transcripts or continuations from a generative run, or pictures
from a text->image run (`generate_images.py`).

    polymodal generate runs/caption --image x.png
    polymodal generate runs/vqa --image x.png --question "what color is the star?"
    polymodal generate runs/asr --audio x.flac
    polymodal generate runs/lm --prompt "what shape is"
    polymodal generate runs/vqa --data data/shapes --split test --out answers.jsonl [--limit 200]
    polymodal generate runs/ldm --prompt "a red star above a blue square" --n 4 --guidance 3 --steps 25 --seed 0

Decoding: greedy by default; --beams N, --sample [--temperature T --top-k K --top-p P --seed S],
--repetition-penalty R, --stop STR, --max-new-tokens N, --no-cache. --stream prints the text as it is decoded.
Pictures: --prompt TEXT (repeatable) --n N --guidance G --steps N --seed S --sampler ddim|dpm|ddpm --out DIR."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..api import load_generator
from ..data.formats.dataset import open_dataset
from ..errors import InvalidInput
from ..eval.gen_items import task_items
from ..lm.decoding import DecodingOptions
from ..models.generative import GenerativeModel
from ..models.t2i_front import is_image_run
from .generate_images import add_image_args, main_images, refuse_flags
from .search import load_inputs


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """The decoding flags of `polymodal generate` and `polymodal chat` (read back by `_options`)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="tokens to generate at most (48)")
    g.add_argument("--beams", type=int, default=1, metavar="N", help="beam search with N beams (default 1: greedy)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature (1.0)")
    g.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    g.add_argument("--top-p", type=float, metavar="P", help="sample within probability mass P (nucleus)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="> 1 discourages repeats")
    g.add_argument("--stop", action="append", default=[], metavar="STR", help="cut the text at STR (repeatable)")
    g.add_argument("--seed", type=int, metavar="S", help="seed for sampling (reproducible)")
    g.add_argument("--no-cache", dest="use_cache", action="store_false", help="decode without the KV cache (slow)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal generate", description=(
        "Generate text with a trained generative run (lm_tiny, caption_tiny, vqa_tiny, asr_tiny): from one input "
        "given on the command line, or for every item of a data set into a JSONL file (id, prompt, text, "
        "references), which `polymodal eval --task` scores. With a text->image run (latent_diffusion, token_ar), "
        "draw pictures of --prompt texts into PNG files."), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("run", metavar="RUN", help="a generative run folder (arch lm, captioner, vqa or asr), or a "
                                              "text->image run (latent_diffusion, token_ar)")
    g = p.add_argument_group("one input")
    g.add_argument("--image", metavar="FILE", help="an image file (PNG, JPEG, ...)")
    g.add_argument("--video", metavar="FILE", help="a clip: .npy T x H x W x 3 uint8 or a film-strip PNG")
    g.add_argument("--video-frames", type=int, metavar="T", help="frames in the film strip (default: square frames)")
    g.add_argument("--audio", metavar="FILE", help="an audio file (FLAC, WAV, OGG)")
    g.add_argument("--question", "--prompt", dest="prompt", metavar="TEXT", action="append",
                   help="the question (VQA) or the text to continue (LM; given twice, the last counts); for a "
                        "text->image run, what to draw (repeatable)")
    g.add_argument("--stream", action="store_true", help="print the text as it is decoded (greedy or sampling)")
    g = p.add_argument_group("a data set")
    g.add_argument("--data", metavar="DATA", help="a data folder / .jsonl / WebDataset with targets")
    g.add_argument("--split", help="one split of a generated data set (e.g. test)")
    g.add_argument("--out", metavar="FILE", help="write one JSON line per item here (default: stdout); for a "
                                                 "text->image run, the folder of the PNG files (./generated)")
    g.add_argument("--limit", type=int, metavar="N", help="at most N items")
    g.add_argument("--lang", action="append", metavar="LANG", help="only items in this language (repeatable)")
    add_decoding_args(p)
    add_image_args(p)
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="inputs decoded together (16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of plain text")
    return p


def _options(args: argparse.Namespace) -> DecodingOptions:
    return DecodingOptions(max_new_tokens=args.max_new_tokens, num_beams=args.beams, do_sample=args.sample,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           repetition_penalty=args.repetition_penalty, stop=tuple(args.stop), seed=args.seed,
                           use_cache=args.use_cache)


class TextStreamer:
    """Writes the new text of row 0 to ``out`` as tokens arrive (all ids so far decoded each time, so a character
    split over tokens is written once whole). ``decode``: ids -> text; ``strip``: the text as a reply is shown
    (no leading space); ``end_line``: a newline at the end (`polymodal generate`), none for a chat reply."""

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO, strip: bool = False, end_line: bool = True):
        self.decode, self.out, self.strip, self.end_line = decode, out, strip, end_line
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call is the prompt
            self.prompt_seen = True
            return
        self.ids.append(int(value.reshape(-1)[0]))
        text = self.decode(self.ids)
        text = text.strip() if self.strip else text
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text

    def end(self) -> None:
        if self.end_line:
            self.out.write("\n")
            self.out.flush()


def _one(model: GenerativeModel, args: argparse.Namespace, options: DecodingOptions) -> int:
    inputs = load_inputs(argparse.Namespace(text=None, image=args.image, audio=args.audio, video=args.video,
                                            video_frames=args.video_frames, vector_file=None))
    samples = model.samples(image=inputs.get("image"), audio=inputs.get("audio"), video=inputs.get("video"),
                            prompt=args.prompt)
    prompts = [args.prompt] * len(samples) if args.prompt is not None else None
    if args.stream:
        if not options.streamable:
            raise InvalidInput("--stream needs greedy or sampling decoding, not beam search", field="--beams")
        tok = model.model.tokenizer
        assert tok is not None
        texts = model.generate_samples(samples, prompts, options, streamer=TextStreamer(tok.decode, sys.stdout))
    else:
        texts = model.generate_samples(samples, prompts, options, batch_size=args.batch_size)
        if args.json:
            print(json.dumps({"task": model.task, "text": texts[0], "prompt": args.prompt}, ensure_ascii=False))
        else:
            print(texts[0])
    return 0


def _dataset(model: GenerativeModel, args: argparse.Namespace, options: DecodingOptions) -> int:
    ds = open_dataset(args.data, split=args.split)
    media = model.modalities[0] if model.modalities else None
    items = task_items(ds, model.task, media, args.lang)
    if args.limit is not None:
        items = items[:max(0, args.limit)]
    if not items:
        raise InvalidInput(f"the data has no {model.task} items (targets) for this model", field="--data",
                           source=args.data)
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        with tqdm(total=len(items), desc="generate", unit="item", file=sys.stderr) as bar:
            for start in range(0, len(items), args.batch_size):
                part = items[start:start + args.batch_size]
                prompts = [it.prompt for it in part] if model.needs_prompt else None
                texts = model.generate_samples([it.sample for it in part], prompts, options,
                                               batch_size=args.batch_size)
                for it, text in zip(part, texts, strict=True):
                    out.write(json.dumps(it.to_json(text, model.task), ensure_ascii=False) + "\n")
                bar.update(len(part))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        rate = len(items) / max(time.perf_counter() - t0, 1e-9)
        summary = {"items": len(items), "out": str(Path(args.out)), "items_per_s": round(rate, 2)}
        print(json.dumps(summary) if args.json else f"generated {len(items)} items into {args.out} "
              f"({rate:.1f} items/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if is_image_run(args.run):
        return main_images(args, parser)
    refuse_flags(args, parser, image_run=False)
    args.prompt = args.prompt[-1] if args.prompt else None   # one question or prompt: the last given
    options = _options(args)
    single = any(v is not None for v in (args.image, args.video, args.audio)) or (args.prompt and not args.data)
    if args.data and single:
        raise InvalidInput("give one input (--image/--video/--audio/--question) or --data, not both", field="--data")
    if not args.data and not single:
        raise InvalidInput("give an input (--image, --video, --audio, --question/--prompt) or --data DIR",
                           field="input")
    model = load_generator(args.run, args.device)
    return _dataset(model, args, options) if args.data else _one(model, args, options)
