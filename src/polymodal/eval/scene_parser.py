"""The scene parser: the judge that reads a `shapes` picture back into its scene graph, so a text->image model's
pictures can be scored against the scene their prompt asked for (`t2i_judges.attribute_scores`).

A small CNN trained on real pictures predicts, for each of the 9 `shapes.POSITIONS` cells, whether an object is
there and its color, shape and size. Predicting per cell (not "the first object, the second object") makes the
output order-free: one- and two-object scenes, counts (occupied cells) and relations (which cells) all come
out of the same heads. No horizontal flips in training: they would swap left and right.

Saved as ``model.safetensors`` + ``config.json`` (the vocabularies travel in the config; no pickles)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .._io import atomic_write_bytes, json_bytes, read_json_object
from ..data.synth import shapes
from ..errors import ConfigError, InvalidInput
from ..rundir import CONFIG, MODEL, check_model_state, read_tensors, tensors_to_bytes

KIND = "scene_parser"
IMAGE_SIZE = shapes.IMAGE_SIZE  # the parser reads 64x64 pictures; other sizes are resized
ATTRIBUTES = ("color", "shape", "size")
FitProgress = Callable[[int, int, float], None]  # (step, steps, loss)


def _vocab() -> dict[str, list[str]]:
    return {"color": list(shapes.COLORS), "shape": list(shapes.SHAPES), "size": list(shapes.SIZES),
            "position": list(shapes.POSITIONS)}


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SceneParser(nn.Module):
    """Image (B, 3, 64, 64) in [0, 1] -> per-cell logits: ``occupied`` (B, 9) and one (B, 9, classes) tensor per
    attribute. ``width`` is the channel count of the first stage (it doubles twice)."""

    def __init__(self, width: int = 16, hidden: int = 256, vocab: dict[str, list[str]] | None = None):
        super().__init__()
        self.width, self.hidden = int(width), int(hidden)
        self.vocab = vocab or _vocab()
        c = self.width
        self.features = nn.Sequential(_block(3, c, 2), _block(c, c, 1), _block(c, 2 * c, 2), _block(2 * c, 2 * c, 1),
                                      _block(2 * c, 4 * c, 2), _block(4 * c, 4 * c, 1))  # -> (4c, 8, 8)
        self.cells = len(self.vocab["position"])
        self.sizes = {"occupied": 1, **{a: len(self.vocab[a]) for a in ATTRIBUTES}}
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * 8 * 8, self.hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(self.hidden, self.cells * sum(self.sizes.values()))

    def config(self) -> dict[str, Any]:
        return {"kind": KIND, "width": self.width, "hidden": self.hidden, "image_size": IMAGE_SIZE,
                "vocab": self.vocab}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.trunk(self.features(x - 0.5))).view(x.shape[0], self.cells, -1)
        parts = torch.split(out, list(self.sizes.values()), dim=-1)
        logits = dict(zip(self.sizes, parts, strict=True))
        logits["occupied"] = logits["occupied"].squeeze(-1)
        return logits

    def parse(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 256) -> list[list[dict[str, Any]]]:
        """The objects of each picture: one dict per occupied cell with ``color``, ``shape``, ``size``,
        ``position`` and ``confidence`` (the parser's probability of exactly this object: occupied times the
        probabilities of the three predicted classes), in `shapes.POSITIONS` order."""
        x = to_tensor(images)
        was_training = self.training
        self.eval()
        out: list[list[dict[str, Any]]] = []
        with torch.no_grad():
            for lo in range(0, x.shape[0], batch_size):
                out.extend(self._decode(self(x[lo:lo + batch_size])))
        self.train(was_training)
        return out

    def _decode(self, logits: dict[str, torch.Tensor]) -> list[list[dict[str, Any]]]:
        occupied = torch.sigmoid(logits["occupied"])
        probs = {a: torch.softmax(logits[a], dim=-1).max(dim=-1) for a in ATTRIBUTES}
        rows = []
        for b in range(occupied.shape[0]):
            objects = []
            for cell in torch.nonzero(occupied[b] > 0.5).flatten().tolist():
                obj: dict[str, Any] = {a: self.vocab[a][int(probs[a].indices[b, cell])] for a in ATTRIBUTES}
                conf = float(occupied[b, cell]) * math.prod(float(probs[a].values[b, cell]) for a in ATTRIBUTES)
                objects.append({**obj, "position": self.vocab["position"][cell], "confidence": round(conf, 6)})
            rows.append(objects)
        return rows


# ----------------------------------------------------------------------------------------------- inputs

def _resized(image: np.ndarray, i: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"image {i} must be a uint8 (H, W, 3) array, got {got}", field="images")
    if image.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    # BOX when shrinking: the data set's own anti-aliasing (drawn large, box-filtered down)
    method = Image.Resampling.BOX if min(image.shape[:2]) > IMAGE_SIZE else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), method), dtype=np.uint8)


def to_uint8(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 pictures (any size; resized to 64x64 with PIL) -> uint8 (N, 3, 64, 64)."""
    rows = list(images) if isinstance(images, np.ndarray) and images.ndim == 4 else images
    if isinstance(rows, np.ndarray) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise InvalidInput("expected a non-empty list or (N, H, W, 3) array of pictures", field="images")
    stack = np.stack([_resized(im, i) for i, im in enumerate(rows)])
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 pictures (any size; resized to 64x64 with PIL) -> float (N, 3, 64, 64) in [0, 1]."""
    return to_uint8(images).float().div_(255.0)


def scene_targets(scenes: Sequence[Sequence[dict[str, Any]]], vocab: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per-cell targets: ``occupied`` (N, 9) float, attribute class ids (N, 9) long (-100 where no object)."""
    cells = {p: i for i, p in enumerate(vocab["position"])}
    index = {a: {v: i for i, v in enumerate(vocab[a])} for a in ATTRIBUTES}
    occ = torch.zeros(len(scenes), len(cells))
    ids = {a: torch.full((len(scenes), len(cells)), -100, dtype=torch.long) for a in ATTRIBUTES}
    for n, scene in enumerate(scenes):
        for obj in scene:
            try:
                cell = cells[obj["position"]]
                for a in ATTRIBUTES:
                    ids[a][n, cell] = index[a][obj[a]]
            except KeyError as exc:
                raise InvalidInput(f"scene {n}: object {obj!r} has an unknown or missing {exc}", field="scenes") from None
            occ[n, cell] = 1.0
    return {"occupied": occ, **ids}


# ----------------------------------------------------------------------------------------------- training

def _augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Light augmentation: a shift of up to ``shift`` pixels (edges replicated: the cell stays the same) and a
    little pixel noise. No flips (left/right would swap)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * shift + 1, (2, b), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.03
    return (out + sigma * torch.randn(out.shape, generator=gen)).clamp_(0.0, 1.0)


def parser_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Occupancy BCE over every cell plus the attribute cross-entropies over the occupied cells."""
    loss = F.binary_cross_entropy_with_logits(logits["occupied"], targets["occupied"])
    for a in ATTRIBUTES:
        loss = loss + F.cross_entropy(logits[a].flatten(0, 1), targets[a].flatten(), ignore_index=-100)
    return loss


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def fit_parser(images: np.ndarray | Sequence[np.ndarray], scenes: Sequence[Sequence[dict[str, Any]]], steps: int = 1500,
               batch_size: int = 64, lr: float = 2e-3, seed: int = 0, width: int = 16,
               progress: FitProgress | None = None) -> SceneParser:
    """Train a `SceneParser` on real pictures ``images`` (N, H, W, 3) uint8 and their scenes (each object a dict
    with color/shape/size/position): AdamW, warmup + cosine, random batches. Deterministic given ``seed`` (its
    own generators; the global torch RNG is left as it was)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInput(f"must be an integer >= 1, got {steps!r}", field="steps")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"must be an integer >= 1, got {batch_size!r}", field="batch_size")
    x = to_uint8(images)  # kept as bytes: a float copy of a large set would be 4x the memory
    if len(scenes) != x.shape[0]:
        raise InvalidInput(f"{x.shape[0]} images but {len(scenes)} scenes", field="scenes")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SceneParser(width=width)
    targets = scene_targets(scenes, model.vocab)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        batch = _augment(x[idx].float().div_(255.0), gen)
        loss = parser_loss(model(batch), {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    return model.eval()


# ----------------------------------------------------------------------------------------------- files

def save_parser(parser: SceneParser, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created); returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MODEL, tensors_to_bytes(parser.state_dict()))
    atomic_write_bytes(out / CONFIG, json_bytes(parser.config()))
    return out


def load_parser(folder: str | Path) -> SceneParser:
    """A parser `save_parser` wrote (in eval mode)."""
    path = Path(folder)
    cfg = read_json_object(path / CONFIG)
    if cfg.get("kind") != KIND:
        raise ConfigError(f"not a scene parser (kind {cfg.get('kind')!r})", field="kind", source=str(path / CONFIG))
    vocab = cfg.get("vocab")
    if not isinstance(vocab, dict) or any(not isinstance(vocab.get(k), list) for k in ("position", *ATTRIBUTES)):
        raise ConfigError("needs lists of positions, colors, shapes and sizes", field="vocab", source=str(path / CONFIG))
    try:
        model = SceneParser(width=int(cfg["width"]), hidden=int(cfg["hidden"]), vocab=vocab)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad or missing width/hidden ({exc})", source=str(path / CONFIG)) from None
    state = read_tensors(path / MODEL)
    check_model_state(model, state, str(path / MODEL))
    model.load_state_dict(state, strict=True)
    return model.eval()


__all__ = ["SceneParser", "fit_parser", "load_parser", "parser_loss", "save_parser", "scene_targets", "to_tensor",
           "to_uint8"]
