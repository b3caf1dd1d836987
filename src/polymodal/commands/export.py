"""``polymodal export``: a model's towers as ONNX graphs (fp32 or INT8) that run in onnxruntime, without torch
weights. See docs/export.md."""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from ..data.sample import Sample
from ..errors import InvalidInput

DESCRIPTION = """Export every tower of MODEL (a polymodal run, a pretrained checkpoint: anything `polymodal.load`
accepts) as one ONNX graph per modality (encoder + projection + L2 normalisation, dynamic batch and time axes),
plus polymodal_export.json (preprocessing, dim, modalities, fingerprint, precision per tower, opset). Each fp32
graph is checked against torch (max abs diff <= 1e-4) before it is written.

The folder loads like a run with the onnx runtime:
  polymodal serve --model DIR --runtime onnx ...     polymodal.load(DIR, runtime="onnx")

--int8 quantizes towers with onnxruntime (the fp32 graphs are kept beside them):
  dynamic   int8 weights of MatMul/Gemm, activations quantized on the fly (transformer towers)
  static    int8 weights and activations, ranges calibrated on --calib samples (CNN towers)
  auto      static for CNN towers when --calib is given, dynamic otherwise
  MOD=MODE,...  per tower, e.g. text=dynamic,image=dynamic,audio=static (towers not named stay fp32)
An export with INT8 towers embeds differently from its source: it gets its own fingerprint, so collections
built with the source refuse it (rebuild them with the export).

The export is written into a hidden sibling of --out and renamed into place when complete: a failed export leaves
--out as it was (retry without --overwrite); --overwrite replaces an earlier export only once the new one is done.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal export", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="run directory or pretrained checkpoint to export")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new or empty)")
    p.add_argument("--int8", metavar="MODE", help="dynamic | static | auto | MOD=MODE,... (default: fp32 only)")
    p.add_argument("--calib", metavar="DATA", help="polymodal data dir with samples for static INT8 calibration")
    p.add_argument("--calib-split", metavar="SPLIT",
                   help="split of --calib to calibrate on (default: train when the data set has one, else all)")
    p.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples read from --calib (default 256)")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (>= 14; default 17)")
    p.add_argument("--device", default="cpu", help="torch device to load the model on for tracing (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (the whole folder)")
    p.add_argument("--json", action="store_true", help="print the written polymodal_export.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.calib_samples < 1:
        raise InvalidInput(f"--calib-samples must be >= 1, got {args.calib_samples}", field="--calib-samples")
    from ..api import load_embedding as load
    from ..models.onnx import export_model, parse_int8

    model = load(args.model, device=args.device)
    modes = parse_int8(args.int8, model.modalities)   # a bad --int8 fails before any work
    if "static" in modes.values() and not args.calib:
        raise InvalidInput("static INT8 needs --calib DATA (samples to calibrate activation ranges on)",
                           field="--calib")
    calib = _calibration(args) if args.calib else None
    manifest = export_model(model, args.out, int8=modes, calib=calib, opset=args.opset, overwrite=args.overwrite,
                            log=lambda msg: print(f"polymodal export: {msg}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(manifest, indent=1, sort_keys=True))
    else:
        print(f"exported {', '.join(manifest['modalities'])} to {args.out} (opset {manifest['opset']}, dim "
              f"{manifest['dim']}, fingerprint {manifest['fingerprint'][:12]})")
        for m, tower in manifest["towers"].items():
            check = tower.get("check", {}).get("min_cosine_to_fp32")
            extra = f", min cosine to fp32 {check:.4f}" if check is not None else ""
            print(f"  {m:<6} {tower['precision']:<13} {tower['runtime']['file']:<16} "
                  f"{tower['runtime']['bytes'] / 2**20:7.2f} MiB{extra}")
    return 0


def _calibration(args: argparse.Namespace) -> list[Sample]:
    from ..data.formats import open_dataset

    split = args.calib_split
    if split is None:
        probe = open_dataset(args.calib)
        split = "train" if "train" in probe.splits else None
    return list(itertools.islice(open_dataset(args.calib, split=split), args.calib_samples))
