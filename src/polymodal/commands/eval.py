"""`polymodal eval RUN --data DIR [--split test] --task retrieval|zeroshot|classification|captioning|vqa|asr|
text_to_image [--json] [--no-progress]`.

The run's arch is checked before anything is read (a fusion run needs --task classification, an alignment run
retrieval or zeroshot, a generative run the task it generates: captioner -> captioning, vqa -> vqa, asr -> asr,
lm -> vqa as text-only question answering); then the samples are read and encoded (or generated from) with
progress bars on stderr, and the result is printed as tables (or one JSON object).

Generation tasks put baselines in the same table: captioning the nearest training caption by an embedding model
(--baseline-model), VQA the per-type prior answer of the train split (--train-split) and a question-only run
(--blind); ASR reports the test sentences that occur in the train split, and the error rates without them.
--out FILE writes every item's prediction (and the baselines') as JSON lines.

A vision-language encoder run (vl_encoder) takes --task matching (ITM accuracy, R@1 contrastive and ITM re-ranked;
--candidates MODEL), grounding (pointing game) or vqa (answer classification): see `eval_vl`. A text->image run
(latent_diffusion, token_ar) takes --task text_to_image: see `eval_t2i`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidInput
from . import eval_t2i as t2i
from .eval_format import GENERATION, format_result
from .eval_mllm import MLLM_TASKS, evaluate_embodied, evaluate_mllm
from .eval_vl import VIDEOBERT_TASKS, VL_TASKS, check_vl_task, evaluate_vl

GENERATIVE_TASK = {"captioner": "captioning", "vqa": "vqa", "asr": "asr", "lm": "vqa"}  # arch -> its eval task
NEEDS = {"retrieval": "an alignment run", "zeroshot": "an alignment run", "classification": "a fusion run",
         "captioning": "a generative captioner run", "vqa": "a generative vqa (or lm) run", "asr": "an asr run",
         t2i.T2I_TASK: t2i.NEEDS_T2I}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polymodal eval",
        description="Evaluate a trained run (or a pretrained checkpoint) on a data set split. retrieval: R@1/5/10, median/mean rank in every "
                    "direction between the modalities the model and data share (CLIP_benchmark definitions), "
                    "attribute-match R@k and the caption duplicate rate; zeroshot: prompt-ensemble "
                    "classification (acc1, acc5, mean per-class recall); both need an alignment run. "
                    "classification: a fusion run's accuracy and macro-F1, with --robustness the "
                    "missing-modality and noise sweeps, with --attribution each modality's Shapley value. "
                    "Tables on stdout (--json: one JSON object), progress on stderr.")
    p.add_argument("run", metavar="MODEL", help="run directory written by `polymodal train`, or (retrieval, "
                   "zeroshot) a pretrained checkpoint: a Hugging Face CLIP/SigLIP/CLAP/Chinese-CLIP/ALIGN folder, "
                   "open_clip:ARCH:CHECKPOINT, a sentence-transformers folder (see docs/pretrained.md)")
    p.add_argument("--data", required=True, help="data set (generated dir, shard dir, .jsonl or folder)")
    p.add_argument("--split", default=None, help="split of a generated data set (default: test; other sources are "
                   "read whole)")
    p.add_argument("--task", choices=("retrieval", "zeroshot", "classification", *GENERATION, *VL_TASKS[:2],
                                          *VIDEOBERT_TASKS, *MLLM_TASKS, t2i.T2I_TASK), default="retrieval",
                   help="matching, grounding (and vqa): a vl_encoder run (docs/architectures.md); motion: a videobert "
                        "run; instruct, fewshot, embodied (and captioning, vqa): an mllm run (docs/mllm.md); "
                        "text_to_image: a latent_diffusion or token_ar run (docs/evaluation.md)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    p.add_argument("--all-captions", action="store_true",
                   help="retrieval: every metadata caption (e.g. English and Chinese) is an extra caption")
    p.add_argument("--modalities", default=None, help="comma list restricting the modalities evaluated")
    p.add_argument("--label-field", default="label",
                   help="zeroshot: metadata field holding the label, dotted (e.g. labels.color)")
    p.add_argument("--classes", default=None, help="zeroshot: comma list of class names (default: from the "
                   "data set manifest)")
    p.add_argument("--lang", default=None, type=t2i.lang_arg, metavar="LANG", help="en or zh. zeroshot: prompt "
                   "language (default en); captioning/vqa/asr: only items in this language (default: every language "
                   "the model writes); text_to_image: a comma list, e.g. en,zh (default: the run's languages)")
    p.add_argument("--robustness", action="store_true", help="classification: missing-modality and noise sweeps")
    p.add_argument("--attribution", action="store_true", help="classification: exact Shapley values of each "
                   "modality (accuracy, mean log-probability of the true class) over every coalition of modalities")
    p.add_argument("--late-fusion", default=None, help="classification: a late-fusion run for effective robustness")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="retrieval/zeroshot: run the towers with torch or onnxruntime (extra [onnx]; an ONNX export "
                        "written by `polymodal export` needs onnx)")
    v = p.add_argument_group("vision-language encoders (vl_encoder runs: matching, grounding, vqa)")
    v.add_argument("--candidates", metavar="MODEL", help="matching: the dual encoder whose ranking the matching "
                   "head re-ranks (needed by every family but blip, which has its own)")
    v.add_argument("--rerank-k", type=int, default=16, metavar="K", help="matching: candidates re-ranked (16)")
    m = p.add_argument_group("multimodal LLMs (mllm runs: instruct, fewshot, embodied)")
    m.add_argument("--shots", default="0,2,4,8", help="fewshot: shot counts, comma-separated (0,2,4,8)")
    m.add_argument("--fewshot-tasks", default="color_of", help="fewshot: untrained question forms "
                   "(color_of: 'star ->' asks the star's colour; size_of: 'star size:')")
    m.add_argument("--limit-queries", type=int, default=200, metavar="N", help="fewshot: queries per shot count")
    g = p.add_argument_group("generation (captioning, vqa, asr)")
    g.add_argument("--baseline-model", metavar="MODEL", help="captioning: an alignment run or pretrained embedding "
                   "model; its nearest training caption per test image is the retrieval baseline")
    g.add_argument("--blind", metavar="RUN", help="vqa: a question-only run (lm, or vqa with blind: true) answering "
                   "the same questions without the picture")
    g.add_argument("--train-split", default="train", metavar="SPLIT", help="split the baselines learn from (VQA "
                   "prior answers, captions to retrieve, ASR sentence overlap; default train; 'none': skip)")
    g.add_argument("--out", metavar="FILE", help="write one JSON line per item (prediction, references, baselines)")
    g.add_argument("--beams", type=int, default=1, metavar="N", help="beam search with N beams (default 1: greedy)")
    g.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="tokens to generate at most (48)")
    g.add_argument("--batch-size", type=int, default=16, metavar="N", help="inputs decoded together (16)")
    g.add_argument("--no-meteor", dest="meteor", action="store_false", default=None,
                   help="captioning: skip METEOR (run when Java is present; its start takes ~45 s per system)")
    g.add_argument("--device", default="cpu", help="torch device for generation (default cpu)")
    t2i.add_t2i_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the status lines still go to stderr)")
    return p


def _classes(ds: Any, field: str, lang: str, given: str | None) -> tuple[list[str], list[str]]:
    """(prompt class names, label names) from --classes or the manifest's labels."""
    if given:
        names = [c.strip() for c in given.split(",") if c.strip()]
        return names, names
    labels = (getattr(ds, "manifest", None) or {}).get("labels", {})
    key = "classes" if field == "label" else field.split(".")[-1] + "s"
    if key not in labels:
        raise InvalidInput(f"cannot find class names '{key}' in the manifest labels; pass --classes",
                           field="classes")
    names = list(labels[key])
    zh = labels.get(f"{key}_zh") or (labels.get("zh") or {}).get(key)  # digits: a list; shapes: a name map
    if isinstance(zh, dict):
        zh = [zh.get(n, n) for n in names]
    return (list(zh) if lang == "zh" and zh else names), names


def _say(text: str) -> None:
    print(f"polymodal eval: {text}", file=sys.stderr, flush=True)


def check_task(run: str, task: str) -> str:
    """The run's arch, after checking that ``task`` can evaluate it; the error names the task that can. Anything
    that is not a polymodal run is taken for a pretrained embedding model (`polymodal.load` checks it)."""
    from pathlib import Path

    from ..models import is_polymodal_run, resolve_run
    from ..rundir import read_run_config

    if not is_polymodal_run(Path(run).expanduser()):
        if task in ("classification", *GENERATION, t2i.T2I_TASK):
            raise InvalidInput(f"{run} is not a polymodal run: --task {task} needs {NEEDS[task]}; a pretrained "
                               "checkpoint is evaluated with --task retrieval or --task zeroshot", field="--task")
        return "alignment"
    arch = str(read_run_config(resolve_run(run))["arch"])
    t2i.check_t2i_task(run, task, arch)
    if task == t2i.T2I_TASK:
        return arch
    if arch == "mllm":
        if task not in (*MLLM_TASKS, "captioning", "vqa"):
            raise InvalidInput(f"{run} is a multimodal LLM (mllm) run: evaluate it with --task "
                               f"{', '.join(MLLM_TASKS)}, captioning or vqa", field="--task")
        return arch
    if task in MLLM_TASKS:
        raise InvalidInput(f"--task {task} needs an mllm run; {run} is an {arch!r} run", field="--task")
    if arch in ("vl_encoder", "videobert"):
        check_vl_task(run, task, arch)
        return arch
    if task in (*VL_TASKS[:2], *VIDEOBERT_TASKS):
        raise InvalidInput(f"--task {task} needs a vl_encoder run (motion: a videobert run); {run} is an "
                           f"{arch!r} run", field="--task")
    if arch in GENERATIVE_TASK:
        right = GENERATIVE_TASK[arch]
        if task != right:
            what = " (text-only question answering)" if arch == "lm" else ""
            raise InvalidInput(f"{run} is a generative {arch} run: evaluate it with --task {right}{what}; --task "
                               f"{task} needs {NEEDS[task]}", field="--task")
        return arch
    if task in GENERATION:
        other = "classification" if arch == "fusion" else "retrieval or --task zeroshot"
        raise InvalidInput(f"{run} is a{'n' if arch[:1] in 'aeiou' else ''} {arch} run, not a generative one: "
                           f"--task {task} needs {NEEDS[task]}; evaluate this one with --task {other}",
                           field="--task")
    if arch == "fusion" and task != "classification":
        raise InvalidInput(f"{run} is a fusion classifier: evaluate it with --task classification (add "
                           f"--robustness for the missing-modality and noise sweeps); --task {task} needs an "
                           "alignment run", field="--task")
    if arch == "alignment" and task == "classification":
        raise InvalidInput(f"{run} is an alignment (embedding) run: evaluate it with --task retrieval or --task "
                           "zeroshot; --task classification needs a fusion run", field="--task")
    return arch


def _read(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from tqdm import tqdm

    from ..data.formats import open_dataset

    ds = open_dataset(args.data)
    if args.split is None:  # the default: the test split of a generated data set, all of any other source
        args.split = "test" if ds.splits else None
    if args.split is not None:
        ds = open_dataset(args.data, split=args.split)
    total = len(ds) if args.limit is None else min(len(ds), args.limit)
    _say(f"reading {total} samples of {args.data} [{args.split or 'all'}]")
    samples = []
    with tqdm(total=total, desc="reading", unit="sample", disable=args.no_progress) as bar:
        for s in ds:
            samples.append(s)
            bar.update(1)
            if args.limit is not None and len(samples) >= args.limit:
                break
    if not samples:
        raise InvalidInput("no samples to evaluate", source=args.data)
    return ds, samples


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t2i.check_t2i_flags(args, parser)
    if args.attribution and args.task != "classification":
        raise InvalidInput("--attribution is for --task classification (a fusion run)", field="--attribution")
    arch = check_task(args.run, args.task)
    if args.late_fusion:
        check_task(args.late_fusion, "classification")
    if arch in ("vl_encoder", "videobert") or args.task in MLLM_TASKS:
        pass
    elif args.task in GENERATION:
        _check_generation_flags(args)
    elif args.baseline_model or args.blind:
        raise InvalidInput("--baseline-model and --blind are for --task captioning and vqa", field="--task")
    if args.task == "embodied":  # closed loop: the data dir's test tasks, no samples read
        loop = {"run": args.run, "data": args.data, "split": "test", "task": args.task, **evaluate_embodied(args)}
        print(json.dumps(loop, ensure_ascii=False) if args.json else format_result(loop))
        return 0
    ds, samples = _read(args)
    mods = args.modalities.split(",") if args.modalities else None
    progress = not args.no_progress
    result: dict[str, Any] = {"run": args.run, "data": args.data, "split": args.split, "task": args.task}
    if args.task == t2i.T2I_TASK:
        result.update(t2i.evaluate_text_to_image(args, samples))
    elif arch in ("vl_encoder", "videobert"):
        result.update(evaluate_vl(args, samples))
    elif args.task in MLLM_TASKS:
        result.update(evaluate_mllm(args, samples))
    elif args.task == "classification":
        from ..eval.classification import evaluate_classification

        late = None
        what = "clean, each modality missing" + (", noise sweeps" if args.robustness else "")
        if args.late_fusion:
            _say(f"classifying with the late-fusion reference {args.late_fusion} (noise sweeps)")
            late = evaluate_classification(args.late_fusion, samples, robustness=True, progress=progress)
        _say(f"classifying {len(samples)} samples with {args.run} ({what})")
        result.update(evaluate_classification(args.run, samples, robustness=args.robustness,
                                              late_fusion_report=late, progress=progress))
        if args.attribution:
            from ..eval.attribution import modality_attribution

            _say("modality attribution: every coalition of modalities, the others masked")
            result["modality_attribution"] = modality_attribution(args.run, samples, progress=progress)
    elif args.task in GENERATION:
        result.update(_generation(args, ds, samples))
    else:
        from ..api import load_embedding as load
        from ..eval.tasks import evaluate_retrieval, evaluate_zeroshot

        _say(f"loading the model {args.run}")
        model = load(args.run, runtime=args.runtime)
        _say(f"encoding {len(samples)} samples ({args.task})")
        if args.task == "retrieval":
            result.update(evaluate_retrieval(model, samples, all_captions=args.all_captions, modalities=mods,
                                             progress=progress))
        else:
            prompt_names, label_names = _classes(ds, args.label_field, args.lang or "en", args.classes)
            result.update(evaluate_zeroshot(model, samples, prompt_names, label_names=label_names,
                                            label_field=args.label_field, lang=args.lang or "en", modalities=mods,
                                            progress=progress))
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0


def _check_generation_flags(args: argparse.Namespace) -> None:
    """Refuse flags that do not belong to the task, and check the baseline runs, before anything is read."""
    if args.baseline_model and args.task != "captioning":
        raise InvalidInput("--baseline-model is the captioning retrieval baseline (use it with --task captioning)",
                           field="--baseline-model")
    if args.blind and args.task != "vqa":
        raise InvalidInput("--blind is the question-only VQA baseline (use it with --task vqa)", field="--blind")
    for flag, run, task in (("--baseline-model", args.baseline_model, "retrieval"), ("--blind", args.blind, "vqa")):
        if run:
            try:
                check_task(run, task)
            except InvalidInput as exc:
                raise InvalidInput(f"{flag}: {exc.message}", field=flag) from None


def _train_split(args: argparse.Namespace, ds: Any) -> list[Any] | None:
    """The samples of --train-split of the same data dir (None: 'none', or the data has no such split)."""
    from tqdm import tqdm

    from ..data.formats import open_dataset

    name = args.train_split
    if not name or name.lower() == "none":
        return None
    if name not in (getattr(ds, "splits", None) or []):
        _say(f"{args.data} has no '{name}' split: no baselines from training data")
        return None
    train = open_dataset(args.data, split=name)
    _say(f"reading the '{name}' split for the baselines")
    with tqdm(total=len(train), desc=f"reading {name}", unit="sample", disable=args.no_progress) as bar:
        out = []
        for s in train:
            out.append(s)
            bar.update(1)
    return out


def _generation(args: argparse.Namespace, ds: Any, samples: list[Any]) -> dict[str, Any]:
    from ..api import load_embedding, load_generator
    from ..eval.generation import evaluate_asr, evaluate_captioning, evaluate_vqa
    from ..lm.decoding import DecodingOptions

    options = DecodingOptions(max_new_tokens=args.max_new_tokens, num_beams=args.beams)
    langs = [args.lang] if args.lang else None
    _say(f"loading the model {args.run}")
    model = load_generator(args.run, args.device)
    train = _train_split(args, ds)
    common: dict[str, Any] = {"train_samples": train, "langs": langs, "options": options,
                              "batch_size": args.batch_size, "progress": not args.no_progress}
    _say(f"generating for {len(samples)} samples ({args.task}, {'beam ' + str(args.beams) if args.beams > 1 else 'greedy'})")
    if args.task == "captioning":
        base = None
        if args.baseline_model:
            _say(f"loading the retrieval baseline {args.baseline_model}")
            base = load_embedding(args.baseline_model, device=args.device, runtime=args.runtime)
        result = evaluate_captioning(model, samples, retrieval_model=base, meteor=args.meteor, **common)
    elif args.task == "vqa":
        blind = load_generator(args.blind, args.device) if args.blind else None
        result = evaluate_vqa(model, samples, blind_model=blind, **common)
    else:
        result = evaluate_asr(model, samples, **common)
    result["baselines"] = {k: v for k, v in (("retrieval", args.baseline_model), ("blind", args.blind),
                                             ("train_split", args.train_split if train is not None else None))
                           if v}
    predictions = result.pop("predictions")
    if args.out:
        from .._io import atomic_write_bytes

        atomic_write_bytes(args.out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions).encode())
        result["out"] = args.out
        _say(f"wrote {len(predictions)} predictions to {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(main())
