"""Visual words for VideoBERT: hand-made segment features of a clip, quantised by hierarchical k-means.

VideoBERT (Sun et al. 2019) turns 1.5 s of video into an S3D feature and the feature into a "visual word" by
hierarchical k-means (k = 12 per level, depth 4: 12**4 words). At our scale there is no pretrained video
network, so a *segment* is a pair of consecutive frames and its feature is computed without learned weights
from the frames in [0, 1] (``(B, T, 3, H, W)``, what the video transform gives, un-normalised):

- **motion** (2 numbers): the global Lucas-Kanade flow of the changing pixels. With ``L`` the luminance,
  ``I_t = L(t+1) - L(t)``, ``I_x``/``I_y`` central differences of the mean of both frames, and only pixels
  with ``|I_t| > change_threshold`` counted, ``v`` solves ``[[sum I_x I_x, sum I_x I_y], [sum I_x I_y,
  sum I_y I_y]] v = -[sum I_x I_t, sum I_y I_t]``. A static scene has no changing pixel and gets ``v = 0``.
  ``v`` is in pixels of a 32-pixel-wide frame, squashed with ``tanh(v / flow_scale)``. A low-resolution
  frame would carry motion only implicitly (k-means would spend its words on the background); the flow
  carries the direction explicitly, which is what the zero-shot motion task reads.
- **color of what moves** (3): the mean RGB of the pixels the moving object covers, weighted by
  ``relu(I_t)`` in frame t+1 (where it arrives) and ``relu(-I_t)`` in frame t (where it leaves). Objects are
  brighter than the dark backgrounds of the `shapes` data; elsewhere this is "the color of the change".
- **layout** (``3 * pool**2``): the mean of both frames average-pooled to ``pool x pool`` (0 = left out).

Each part is multiplied by its weight, so the weights decide what the first k-means level splits on.

Hierarchical k-means: level 0 splits the features into ``k`` clusters; each cluster of level l is split into
``k`` children at level l+1, using only its own points. A word is the path of the nearest centroid at each
level, read as a number in base ``k``: ``word // k**(depth-1-l)`` is the node at level l, and the word is in
``[0, k**depth)``. The codebook is one tensor of ``sum_{l=1..depth} k**l`` rows (level by level, node ``n`` of
a level holding rows ``n*k .. n*k+k-1`` of the next), so its shape depends on the config only. Fitting is
deterministic given ``seed`` (k-means++ seeding from a private ``torch.Generator``, then Lloyd iterations; an
emptied cluster keeps its centroid; a node without points gets ``k`` copies of its parent's centroid)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InvalidInput

REFERENCE_WIDTH = 32  # the flow is expressed in pixels of a frame this wide


@dataclass(frozen=True)
class VisualWordsSpec:
    """How clips become visual words (the ``video`` section of a VideoBERT config)."""

    image_size: int = 32  # frames are resized to this (the video transform)
    feature_size: int = 16  # ... and average-pooled to this before the features (4x less work than 32)
    frames: int = 8  # frames read per clip (exactly this many): frames - 1 segments
    k: int = 12  # clusters per level
    depth: int = 2  # levels: k**depth words
    iters: int = 25  # Lloyd iterations per node
    seed: int = 0
    max_fit_clips: int = 4096  # training clips read to fit the codebook
    pool: int = 2  # layout part: pool x pool mean colors (0 = none)
    motion_weight: float = 1.0
    color_weight: float = 1.0
    layout_weight: float = 0.5
    flow_scale: float = 1.0  # pixels (of a 32-wide frame) per frame where tanh reaches 0.76
    change_threshold: float = 0.02  # |luminance change| (in [0, 1]) of a pixel that counts as moving

    def __post_init__(self) -> None:
        for name, low in (("image_size", 4), ("feature_size", 4), ("frames", 2), ("k", 2), ("depth", 1),
                          ("iters", 1), ("max_fit_clips", 1), ("pool", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"must be an integer >= {low}, got {v!r}", field=f"video.{name}")
        if self.k ** self.depth > 1_000_000:
            raise ConfigError(f"k**depth = {self.k ** self.depth} words is too many (at most 1e6)",
                              field="video.depth")
        if self.feature_size > self.image_size:
            raise ConfigError(f"feature_size {self.feature_size} is larger than image_size {self.image_size}",
                              field="video.feature_size")
        if self.pool > self.feature_size:
            raise ConfigError(f"pool {self.pool} is larger than feature_size {self.feature_size}",
                              field="video.pool")
        for name in ("motion_weight", "color_weight", "layout_weight", "flow_scale", "change_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v == float("inf"):
                raise ConfigError(f"must be a finite number >= 0, got {v!r}", field=f"video.{name}")
        if self.flow_scale == 0:
            raise ConfigError("must be > 0", field="video.flow_scale")

    @property
    def words(self) -> int:
        return int(self.k ** self.depth)

    @property
    def segments(self) -> int:
        return self.frames - 1

    @property
    def dim(self) -> int:
        return 2 + 3 + 3 * self.pool * self.pool


# ----------------------------------------------------------------------------------------------- features

def _flow(lum: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Global Lucas-Kanade flow (vx, vy), each (B, T-1), of consecutive luminance frames (B, T, H, W); the
    one-pixel border (where central differences are undefined) is left out."""
    a, b = lum[:, :-1], lum[:, 1:]
    m = (a + b) / 2
    it = (b - a)[..., 1:-1, 1:-1]
    ix = (m[..., 1:-1, 2:] - m[..., 1:-1, :-2]) / 2
    iy = (m[..., 2:, 1:-1] - m[..., :-2, 1:-1]) / 2
    w = (it.abs() > threshold).to(m.dtype)
    wx, wy = w * ix, w * iy
    dims = (-1, -2)
    gxx, gyy, gxy = (wx * ix).sum(dims), (wy * iy).sum(dims), (wx * iy).sum(dims)
    bx, by = (wx * it).sum(dims), (wy * it).sum(dims)
    det = gxx * gyy - gxy * gxy
    ok = det.abs() > 1e-8
    safe = torch.where(ok, det, torch.ones_like(det))
    vx = torch.where(ok, -(gyy * bx - gxy * by) / safe, torch.zeros_like(det))
    vy = torch.where(ok, -(gxx * by - gxy * bx) / safe, torch.zeros_like(det))
    return vx, vy


def _moving_color(frames: torch.Tensor, lum: torch.Tensor) -> torch.Tensor:
    """(B, T-1, 3): mean RGB where the luminance rises (frame t+1) or falls (frame t); 0 without change."""
    it = lum[:, 1:] - lum[:, :-1]
    up, down = it.clamp(min=0), (-it).clamp(min=0)
    total = (torch.einsum("bthw,btchw->btc", up, frames[:, 1:])
             + torch.einsum("bthw,btchw->btc", down, frames[:, :-1]))
    weight = (up + down).sum((-1, -2)).unsqueeze(-1)
    return total / weight.clamp(min=1e-6)


def segment_features(frames: torch.Tensor, spec: VisualWordsSpec) -> torch.Tensor:
    """Features (B, T-1, spec.dim) of the consecutive frame pairs of clips ``frames`` (B, T, 3, H, W) in [0, 1]."""
    if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] < 2:
        raise InvalidInput(f"expected clips (B, T>=2, 3, H, W), got {tuple(frames.shape)}", field="video")
    x = frames.float()
    if x.shape[-1] != spec.feature_size or x.shape[-2] != spec.feature_size:
        b, t = x.shape[:2]
        x = F.adaptive_avg_pool2d(x.flatten(0, 1), spec.feature_size).view(b, t, 3, spec.feature_size,
                                                                        spec.feature_size)
    lum = x.mean(2)
    vx, vy = _flow(lum, spec.change_threshold)
    scale = REFERENCE_WIDTH / x.shape[-1]
    motion = torch.tanh(torch.stack([vx, vy], -1) * scale / spec.flow_scale)
    parts = [motion * spec.motion_weight, _moving_color(x, lum) * spec.color_weight]
    if spec.pool:
        b, t = x.shape[:2]
        mean = ((x[:, 1:] + x[:, :-1]) / 2).flatten(0, 1)
        layout = F.adaptive_avg_pool2d(mean, spec.pool).reshape(b, t - 1, -1)
        parts.append(layout * spec.layout_weight)
    return torch.cat(parts, -1)


# ----------------------------------------------------------------------------------------------- k-means

def codebook_rows(k: int, depth: int) -> int:
    """Rows of a hierarchical codebook: ``k + k**2 + ... + k**depth``."""
    return sum(k ** (level + 1) for level in range(depth))


def level_offset(k: int, level: int) -> int:
    """Row where level ``level`` (0-based) starts in the codebook."""
    return codebook_rows(k, level)


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, k) of points (N, D) to centroids (k, D) or per-point centroids (N, k, D)."""
    cand = c.unsqueeze(0) if c.ndim == 2 else c
    return ((x.unsqueeze(1) - cand) ** 2).sum(-1)


def _seed(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++: the first centroid uniformly, each next one with probability ~ squared distance."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = _sq_dist(x, x[chosen[0]].unsqueeze(0))[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        i = (int(torch.randint(n, (1,), generator=g)) if total <= 0
             else int(torch.multinomial(d2 / total, 1, generator=g)))
        chosen.append(i)
        d2 = torch.minimum(d2, _sq_dist(x, x[i].unsqueeze(0))[:, 0])
    return x[chosen].clone()


def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat k-means of points (N, D): (centroids (k, D), labels (N,) = index of the nearest centroid, lowest
    index on ties). Lloyd iterations stop early once no label changes; an empty cluster keeps its centroid."""
    c = _seed(x, k, g)
    labels = _sq_dist(x, c).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), c)
        new = _sq_dist(x, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return c, _sq_dist(x, c).argmin(1)


def fit_hierarchical_kmeans(x: torch.Tensor, k: int, depth: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """The codebook (``codebook_rows(k, depth)``, D) of hierarchical k-means on features ``x`` (N, D)."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInput(f"expected features (N>=1, D), got {tuple(x.shape)}", field="video")
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    book = torch.empty(codebook_rows(k, depth), x.shape[1])
    node = torch.zeros(x.shape[0], dtype=torch.long)  # each point's node at the previous level (root: 0)
    parents = x.mean(0, keepdim=True)
    for level in range(depth):
        off = level_offset(k, level)
        nxt = torch.empty_like(node)
        for p in range(k ** level):
            idx = (node == p).nonzero().squeeze(1)
            rows = slice(off + p * k, off + (p + 1) * k)
            if idx.numel() == 0:
                book[rows] = parents[p].expand(k, -1)
                continue
            cents, labels = kmeans(x[idx], k, iters, g)
            book[rows] = cents
            nxt[idx] = p * k + labels
        node, parents = nxt, book[off:off + k ** (level + 1)]
    return book


def assign_words(x: torch.Tensor, book: torch.Tensor, k: int, depth: int) -> torch.Tensor:
    """Word ids in ``[0, k**depth)`` of features ``x`` (..., D): the nearest child at each level, from the root."""
    flat = x.reshape(-1, x.shape[-1]).to(book.dtype)
    node = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    for level in range(depth):
        off = level_offset(k, level)
        cents = book[off:off + k ** (level + 1)].view(k ** level, k, -1)
        node = node * k + _sq_dist(flat, cents[node]).argmin(1)
    return node.view(x.shape[:-1])


class VisualWords(nn.Module):
    """The fitted codebook (a buffer of fixed shape, saved with the model) and clip -> word ids."""

    codebook: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, spec: VisualWordsSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("codebook", torch.zeros(codebook_rows(spec.k, spec.depth), spec.dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        return segment_features(frames, self.spec)

    def fit(self, features: torch.Tensor) -> None:
        """Fit the codebook on segment features (N, D) (or (B, S, D))."""
        flat = features.reshape(-1, self.spec.dim).to("cpu")
        book = fit_hierarchical_kmeans(flat, self.spec.k, self.spec.depth, self.spec.iters, self.spec.seed)
        self.codebook.copy_(book.to(self.codebook.device))
        self.fitted.fill_(1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Word ids (B, T-1) of clips (B, T, 3, H, W) in [0, 1]."""
        if not self.is_fitted:
            raise InvalidInput("the visual-word codebook is not fitted yet (fit_data before use)", field="video")
        return assign_words(self.features(frames), self.codebook, self.spec.k, self.spec.depth)


__all__ = ["REFERENCE_WIDTH", "VisualWords", "VisualWordsSpec", "assign_words", "codebook_rows",
           "fit_hierarchical_kmeans", "kmeans", "level_offset", "segment_features"]
