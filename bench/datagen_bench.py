"""Benchmark: how fast `make_dataset("shapes", ...)` generates samples, with and without speech, with 1 and
2 worker processes; the time extrapolated to 10,000 samples; output bytes per sample.

Reference in the same run: eSpeak NG alone speaking the same captions in one process (the floor for
any pipeline that speaks every caption), so the table shows what the rest of the pipeline costs.

    python bench/datagen_bench.py [--n 2000] [--langs en] [--workers 1,2] [--json | --markdown]
    python bench/datagen_bench.py --from-json result.json --markdown   # re-render a saved result

Prints one JSON line, then (without --json) a short table (--markdown: the table for docs/datasets.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from polymodal.data.synth import make_dataset, shapes, speech

TARGET = 10_000


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the worker pool), immune to other load."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_make(n: int, langs: list[str], with_speech: bool, workers: int) -> dict:
    mods = ("text", "image", "audio", "video") if with_speech else ("text", "image", "video")
    out = Path(tempfile.mkdtemp(prefix="datagen_bench_"))
    try:
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        make_dataset("shapes", out, n=n, seed=0, langs=langs, modalities=mods, workers=workers, progress=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        size = dir_bytes(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"speech": with_speech, "workers": workers, "seconds": round(seconds, 3),
            "samples_per_s": round(n / seconds, 1), "extrapolated_10k_s": round(TARGET * seconds / n, 1),
            "bytes_per_sample": round(size / n), "cpu_ms_per_sample": round(1000 * cpu / n, 2)}


def run_speech_only(n: int, langs: list[str]) -> dict:
    """eSpeak NG alone on the same captions (voices drawn the same way), one process."""
    jobs = []
    for i in range(n):
        s = shapes.make_sample(i, "train", seed=0, langs=langs, modalities=("text",))
        jobs.append((s.text, speech.random_voice(shapes.sample_rng(0, i), s.metadata["lang"])))
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    seconds_audio = 0.0
    for text, voice in jobs:
        wave, sr = speech.synthesize(text, voice)
        seconds_audio += wave.size / sr
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1),
            "cpu_ms_per_sample": round(1000 * cpu / n, 2),
            "extrapolated_10k_s": round(TARGET * seconds / n, 1), "mean_audio_s": round(seconds_audio / n, 2),
            "realtime_factor": round(seconds_audio / seconds, 1)}


def table(result: dict, markdown: bool) -> str:
    m, ref = result["machine"], result["reference_speech_only"]
    head = (f"shapes, n={result['n']}, langs={','.join(result['langs'])}, {m['cpus']} CPUs, "
            f"load average at the end {m['loadavg_at_end'][0]}")
    rows = [("yes" if r["speech"] else "no", str(r["workers"]), f"{r['samples_per_s']:.1f}",
             f"{r['extrapolated_10k_s'] / 60:.1f} min", f"{r['cpu_ms_per_sample']:.1f}", f"{r['bytes_per_sample']:,}")
            for r in result["runs"]]
    cols = ("speech", "workers", "samples/s", "10,000 samples", "CPU ms/sample", "bytes/sample")
    if markdown:
        lines = [f"{head}:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        lines = [head] + ["".join(f"{c:>16}" for c in cols)] + ["".join(f"{c:>16}" for c in r) for r in rows]
    lines += ["", f"Reference, eSpeak NG alone on the same captions (one process): {ref['samples_per_s']:.1f} captions/s, "
              f"{ref['cpu_ms_per_sample']:.1f} CPU ms/caption, {ref['realtime_factor']}x real time, "
              f"{ref['mean_audio_s']} s of speech per caption."]
    return "\n".join(lines)


def run(n: int, langs: list[str], workers: list[int]) -> dict:
    runs = [run_make(n, langs, sp, w) for sp in (False, True) for w in workers]
    return {
        "bench": "datagen", "dataset": "shapes", "n": n, "langs": langs, "runs": runs,
        "reference_speech_only": run_speech_only(n, langs),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="samples per run (default 2000)")
    ap.add_argument("--langs", default="en", help="caption languages, comma-separated (default en)")
    ap.add_argument("--workers", default="1,2", help="worker counts to try (default 1,2)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs)")
    ap.add_argument("--from-json", metavar="PATH", help="render a saved JSON result instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        text = Path(args.from_json).read_text()
        result = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    else:
        langs = [x for x in args.langs.split(",") if x]
        result = run(args.n, langs, [int(w) for w in args.workers.split(",")])
        print(json.dumps(result))
    if not args.json:
        print(("" if args.from_json else "\n") + table(result, args.markdown), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
