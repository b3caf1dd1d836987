"""Pretrained checkpoints as embedding models, with no training: ``polymodal.load("/models/clip-vit-base-patch32")``.

A checkpoint becomes an `AlignmentModel` whose towers are the checkpoint's own (`polymodal.encoders.pretrained`),
with no extra projection (``projections: "none"``, ``dim`` = the towers' common output width) and the checkpoint's
temperature (and SigLIP's bias) as ``logit_scale`` / ``logit_bias``; the data transform is what the towers'
``preprocess()`` asks for. So everything that takes a trained run (index build, search, serve, eval, quickstart)
takes a checkpoint the same way.

What is recognised (`detect`), in this order:

- an explicit spec ``KIND:PATH`` with KIND one of `KINDS` (``clip:``, ``siglip:``, ``clap:``, ``chinese_clip:``,
  ``align:``, ``sentence_transformers:``), or ``open_clip:ARCH_OR_CONFIG_JSON:CHECKPOINT``;
- a sentence-transformers folder (``modules.json``): text only;
- an OpenCLIP folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``);
- a Hugging Face folder whose ``config.json`` names a ``CLIPModel``, ``SiglipModel``, ``ClapModel``,
  ``ChineseCLIPModel`` or ``AlignModel`` (``architectures``, else ``model_type``).

Nothing is downloaded: a hub id is refused with the hint to download it first. The error for an unknown folder
lists what was looked for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data.transforms.compose import SampleTransform
from ..data.transforms.resolve import transform_config
from ..encoders import Encoder
from ..errors import InvalidInput, NotFound
from .alignment import AlignmentConfig, AlignmentModel
from .embedding import EmbeddingModel, fingerprint
from .registry import load_config


@dataclass(frozen=True)
class Kind:
    """A family of checkpoints: its encoder names per modality and the class / model_type that identify it."""

    name: str
    encoders: dict[str, str]  # modality -> encoder registry name
    hf_class: str | None = None
    model_type: str | None = None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("clip", {"text": "hf_clip_text", "image": "hf_clip_image"}, "CLIPModel", "clip"),
    Kind("siglip", {"text": "hf_siglip_text", "image": "hf_siglip_image"}, "SiglipModel", "siglip"),
    Kind("clap", {"text": "hf_clap_text", "audio": "hf_clap_audio"}, "ClapModel", "clap"),
    Kind("chinese_clip", {"text": "hf_chinese_clip_text", "image": "hf_chinese_clip_image"}, "ChineseCLIPModel",
         "chinese_clip"),
    Kind("align", {"text": "hf_align_text", "image": "hf_align_image"}, "AlignModel", "align"),
    Kind("sentence_transformers", {"text": "st_text"}),
    Kind("open_clip", {"text": "open_clip_text", "image": "open_clip_image"}),
)}
ALIASES = {"hf_clip": "clip", "st": "sentence_transformers", "sentence-transformers": "sentence_transformers",
           "chinese-clip": "chinese_clip", "open-clip": "open_clip", "openclip": "open_clip"}
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
LOOKED_FOR = (
    "a polymodal run (config.json with \"format\": \"polymodal-run\", or a checkpoints/ folder)",
    "an ONNX export (polymodal_export.json)",
    "a sentence-transformers folder (modules.json)",
    "an OpenCLIP folder (open_clip_config.json + " + " or ".join(OPEN_CLIP_WEIGHTS) + ")",
    "a Hugging Face folder whose config.json names one of "
    + ", ".join(k.hf_class for k in KINDS.values() if k.hf_class),
)


@dataclass(frozen=True)
class Detected:
    """What `detect` found: the family and the arguments of each of its encoders."""

    kind: Kind
    args: dict[str, Any]  # encoder kwargs shared by the towers (path=..., or model=/checkpoint= for OpenCLIP)
    source: str


def detect(spec: str) -> Detected:
    """The family and encoder arguments of a checkpoint spec (see the module docstring)."""
    head, sep, rest = spec.partition(":")
    key = ALIASES.get(head, head)
    if sep and key in KINDS and not _is_drive(head):
        if key == "open_clip":
            return _open_clip_spec(rest, spec)
        return Detected(KINDS[key], {"path": _existing_dir(rest, spec)}, spec)
    path = Path(spec).expanduser()
    if not path.exists():
        hint = ("; nothing is downloaded: fetch it first (e.g. `huggingface-cli download ID --local-dir DIR`) and "
                "give the folder" if _looks_like_hub_id(spec) else "")
        raise NotFound(f"no such model folder or file{hint}. A model is one of: " + "; ".join(LOOKED_FOR)
                       + "; or an explicit KIND:PATH with KIND one of " + ", ".join(KINDS), source=spec)
    if not path.is_dir():
        raise InvalidInput("a model is a folder (or open_clip:ARCH:CHECKPOINT for an OpenCLIP checkpoint file)",
                           source=spec)
    if (path / "modules.json").is_file():
        return Detected(KINDS["sentence_transformers"], {"path": str(path.resolve())}, spec)
    if (path / "open_clip_config.json").is_file():
        weights = next((path / w for w in OPEN_CLIP_WEIGHTS if (path / w).is_file()), None)
        if weights is None:
            raise NotFound(f"an OpenCLIP folder without weights (looked for {', '.join(OPEN_CLIP_WEIGHTS)})",
                           source=str(path))
        return Detected(KINDS["open_clip"], {"model": str((path / "open_clip_config.json").resolve()),
                                             "checkpoint": str(weights.resolve())}, spec)
    kind = _hf_kind(path)
    if kind is None:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise NotFound(f"not a model polymodal knows (found: {found}). Looked for: " + "; ".join(LOOKED_FOR)
                       + ". Name the kind explicitly with KIND:PATH (KIND one of " + ", ".join(KINDS) + ")",
                       source=spec)
    return Detected(kind, {"path": str(path.resolve())}, spec)


def _hf_kind(path: Path) -> Kind | None:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the model config: {exc}", source=str(path / "config.json")) from exc
    if not isinstance(cfg, dict):
        return None
    archs = cfg.get("architectures") or []
    for kind in KINDS.values():
        if kind.hf_class and kind.hf_class in archs:
            return kind
    return next((k for k in KINDS.values() if k.model_type and k.model_type == cfg.get("model_type")), None)


def _open_clip_spec(rest: str, spec: str) -> Detected:
    arch, _, checkpoint = rest.partition(":")
    if not arch:
        raise InvalidInput("expected open_clip:ARCH:CHECKPOINT, e.g. open_clip:ViT-B-32:/ckpt/model.safetensors",
                           source=spec)
    if not checkpoint:
        raise InvalidInput("an OpenCLIP model needs its checkpoint: open_clip:ARCH_OR_CONFIG_JSON:CHECKPOINT (nothing "
                           "is downloaded, and random weights are not a model)", source=spec)
    if not Path(checkpoint).expanduser().is_file():
        raise NotFound("OpenCLIP checkpoint file does not exist", source=checkpoint)
    if arch.endswith(".json") and not Path(arch).expanduser().is_file():
        raise NotFound("OpenCLIP model config does not exist", source=arch)
    args: dict[str, Any] = {"model": str(Path(arch).expanduser().resolve()) if arch.endswith(".json") else arch,
                            "checkpoint": str(Path(checkpoint).expanduser().resolve())}
    return Detected(KINDS["open_clip"], args, spec)


def _existing_dir(rest: str, spec: str) -> str:
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise NotFound("model folder does not exist", source=rest or spec)
    return str(path.resolve())


def _is_drive(head: str) -> bool:
    return len(head) == 1  # C:\... on Windows


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


# ---------------------------------------------------------------------------------------------- building

def build_pretrained(found: Detected, device: str | torch.device = "cpu"
                     ) -> tuple[AlignmentModel, SampleTransform, dict[str, Any]]:
    """(model in eval mode, evaluation transform, a run-config-like dict) for a detected checkpoint."""
    import polymodal.encoders.pretrained  # noqa: F401  (registers the pretrained encoder names)

    from ..encoders import create_encoder

    towers: dict[str, Encoder] = {}
    for m, name in found.kind.encoders.items():
        towers[m] = create_encoder(name, **found.args)
    dims = {m: int(t.output_dim) for m, t in towers.items()}
    if len(set(dims.values())) != 1:
        raise InvalidInput(f"the towers' output widths differ ({dims}); polymodal embeds every modality in one "
                           "space", source=found.source)
    dim = next(iter(dims.values()))
    scale = _first(towers, "logit_scale")
    bias = _first(towers, "logit_bias")
    cfg_model: dict[str, Any] = {
        "arch": "alignment", "dim": dim, "loss": "siglip" if bias is not None else "clip", "projections": "none",
        "encoders": {m: {"name": found.kind.encoders[m], **_json_args(found.args)} for m in towers},
        "init_logit_scale": scale, "init_logit_bias": bias,
    }
    model = _assemble(cfg_model, towers)
    transform = transform_config({m: t.preprocess() for m, t in towers.items()}, {})
    config = {"format": "polymodal-pretrained", "arch": "alignment", "model": model.config, "transform": transform,
              "pretrained": {"kind": found.kind.name, **_json_args(found.args), "spec": found.source}}
    model.to(device).eval()
    return model, SampleTransform.from_dict(transform), config


def _assemble(cfg: dict[str, Any], towers: dict[str, Encoder]) -> AlignmentModel:
    """The alignment model around towers already built (a checkpoint is read once), with the checked config
    that `build_alignment_model` would record."""
    c = load_config(AlignmentConfig, cfg)
    model = AlignmentModel(towers, c.dim, projections=c.projections, loss=c.loss, init_logit_scale=c.init_logit_scale,
                           init_logit_bias=c.init_logit_bias)
    model.config = to_dict(c)
    return model


def _first(towers: dict[str, Encoder], attr: str) -> float | None:
    values = [getattr(t, attr, None) for t in towers.values()]
    return next((float(v) for v in values if v is not None), None)


def _json_args(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def load_pretrained(spec: str, device: str | torch.device = "cpu") -> EmbeddingModel:
    """`EmbeddingModel` of a pretrained checkpoint spec (see the module docstring)."""
    found = detect(spec)
    model, transform, config = build_pretrained(found, device)
    em = EmbeddingModel(model, transform, config, torch.device(device), name=spec)
    # The fingerprint names the weights and what shapes the inputs, not where the folder lies: the same
    # checkpoint in another folder embeds alike.
    # (only FINGERPRINT_KEYS of the config count, so the files' digest rides in "model")
    portable = _without_paths(config)
    em._fingerprint = fingerprint(model, {**portable, "model": {**portable["model"], "files": _files_digest(found)}})
    return em


# The files of a checkpoint folder that decide its embeddings besides the weights: model, processor and tokenizer
# configs and vocabularies (Hugging Face, sentence-transformers, OpenCLIP names). A fixed list, so unrelated files
# beside a checkpoint never change its fingerprint and the digest reads a bounded amount.
DECIDING_FILES = (
    "config.json", "preprocessor_config.json", "processor_config.json", "feature_extractor_config.json",
    "image_processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
    "open_clip_config.json",
)
MAX_DIGEST_FILE = 64 << 20


def _files_digest(found: Detected) -> str:
    """sha256 of the checkpoint's `DECIDING_FILES` (and of sentence-transformers' module configs, and of an
    OpenCLIP config JSON given as a file): they decide the embeddings as much as the weights do, and unlike the
    folder's path they move with it."""
    files: list[tuple[str, Path]] = []
    for key in ("path", "model"):
        value = found.args.get(key)
        if not isinstance(value, str):
            continue
        p = Path(value)
        if p.is_file():
            files.append((p.name, p))
        elif p.is_dir():
            files += [(name, p / name) for name in DECIDING_FILES if (p / name).is_file()]
            files += [(f"{m}/config.json", p / m / "config.json") for m in _st_module_dirs(p)]
    h = hashlib.sha256()
    for name, f in sorted(files):
        if f.stat().st_size > MAX_DIGEST_FILE:
            raise InvalidInput(f"a configuration file larger than {MAX_DIGEST_FILE >> 20} MiB", source=str(f))
        h.update(f"{name}\n".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _st_module_dirs(root: Path) -> list[str]:
    """The module folders a sentence-transformers ``modules.json`` lists (e.g. ``1_Pooling``)."""
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    dirs = [m.get("path") for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    return sorted({d for d in dirs if isinstance(d, str) and d and ".." not in d and (root / d).is_dir()})


PATH_KEYS = ("path", "checkpoint", "spec")


def _without_paths(obj: Any) -> Any:
    """``obj`` without where its files lie: path-valued keys dropped, and an OpenCLIP ``model`` that is a config
    file (its content is in the files' digest); an architecture name (``ViT-B-32-quickgelu``) is kept."""
    if isinstance(obj, dict):
        return {k: _without_paths(v) for k, v in obj.items()
                if not (isinstance(v, str) and (k in PATH_KEYS or (k == "model" and _is_path(v))))}
    if isinstance(obj, list):
        return [_without_paths(v) for v in obj]
    return obj


def _is_path(value: str) -> bool:
    return value.endswith(".json") or "/" in value or "\\" in value


__all__ = ["KINDS", "LOOKED_FOR", "Detected", "Kind", "build_pretrained", "detect", "load_pretrained"]
