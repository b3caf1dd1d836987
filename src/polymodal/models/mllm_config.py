"""The ``model`` section of ``arch: "mllm"`` (multimodal LLMs: LLaVA, BLIP-2, Flamingo bridges) as frozen dataclasses.

A run must rebuild exactly without the runs it started from, so the first build writes what it read from them
into the config: the vision tower's and the LM's Hugging Face configs (``vision.hf_config``, ``lm.hf_config``)
and the LM's tokenizer (``tokenizer.json``). Their weights are copied in when training starts (`fit_data`);
afterwards they live in the run's own checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..registry import require_ints
from .registry import register_model_config

BRIDGES: tuple[str, ...] = ("llava", "blip2", "flamingo")
DATA_KINDS: tuple[str, ...] = ("captions", "qa", "conversations")
LM_TRAINING: tuple[str, ...] = ("frozen", "lora", "full")
INPUTS: tuple[str, ...] = ("image", "state", "text")


@dataclass(frozen=True)
class VisionSpec:
    """The image encoder: a captioner/vqa run's ViT (``from_run``) or a fresh ViT of these sizes."""

    from_run: str | None = None
    image_size: int = 64
    patch_size: int = 8
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    train: bool = False  # False: frozen (LLaVA stage 1, BLIP-2, Flamingo); True: tuned with the rest
    hf_config: dict[str, Any] | None = None  # written on the first build (ViTConfig.to_dict())

    def __post_init__(self) -> None:
        require_ints(self, ("image_size", "patch_size", "hidden", "layers", "heads", "intermediate"), "vision")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}",
                              field="vision.patch_size")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the LM's linear layers (peft): rank ``r``, scale ``alpha / r``."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])

    def __post_init__(self) -> None:
        require_ints(self, ("r",), "lm.lora")
        if not self.alpha > 0:
            raise ConfigError(f"must be > 0, got {self.alpha}", field="lm.lora.alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", field="lm.lora.dropout")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError("must name at least one module (e.g. q_proj)", field="lm.lora.targets")


@dataclass(frozen=True)
class LMSpec:
    """The language model: an ``lm`` run or a Hugging Face causal-LM folder (``from_run``), or a fresh Qwen2."""

    from_run: str | None = None
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    train: str = "frozen"  # "frozen" | "lora" | "full"
    lora: LoraSpec = field(default_factory=LoraSpec)
    hf_config: dict[str, Any] | None = None  # written on the first build (the LM's config.to_dict())

    def __post_init__(self) -> None:
        require_ints(self, ("hidden", "layers", "heads", "kv_heads", "intermediate"), "lm")
        if self.train not in LM_TRAINING:
            raise ConfigError(f"must be one of {list(LM_TRAINING)}, got {self.train!r}", field="lm.train")


@dataclass(frozen=True)
class AudioSpec:
    """Speech input (Qwen-Audio style): a Whisper encoder (an ``asr`` run's, ``from_run``, or fresh of these sizes),
    its frames average-pooled to ``slots`` soft tokens by a 2-layer projector. Off unless ``model.audio`` is set."""

    from_run: str | None = None
    slots: int = 16
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    ffn_dim: int = 256
    n_mels: int = 80
    sample_rate: int = 16000
    n_fft: int = 800
    hop_length: int = 640
    chunk_seconds: int = 10
    train: bool = False  # False: the encoder is frozen (the projector always trains)
    hf_config: dict[str, Any] | None = None  # written on the first build (WhisperConfig.to_dict())
    features: dict[str, Any] | None = None  # written on the first build (the log-mel transform)

    def __post_init__(self) -> None:
        require_ints(self, ("slots", "d_model", "layers", "heads", "ffn_dim", "n_mels", "sample_rate", "n_fft",
                            "hop_length", "chunk_seconds"), "audio")


@dataclass(frozen=True)
class ProjectorSpec:
    """LLaVA's projector: Linear -> GELU -> Linear (transformers' LlavaMultiModalProjector)."""

    act: str = "gelu"


@dataclass(frozen=True)
class MLLMConfig:
    arch: str = "mllm"
    bridge: str = "llava"
    init_from: str | None = None  # an earlier mllm run (e.g. stage 1) whose weights start this one
    input: str = "image"  # "image" | "state" (questions carry the scene as text, no picture) | "text" (text only)
    data: list[str] = field(default_factory=lambda: ["conversations"])  # target kinds trained on
    qa_types: list[str] | None = None  # qa targets of these types only (None: all)
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    sequences_per_sample: int = 2  # targets drawn per sample per step (each its own row)
    max_len: int = 160  # tokens per sequence, picture slots included
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"vocab_size": 1024})
    vision: VisionSpec = field(default_factory=VisionSpec)
    lm: LMSpec = field(default_factory=LMSpec)
    projector: ProjectorSpec = field(default_factory=ProjectorSpec)
    audio: dict[str, Any] | None = None  # `AudioSpec` fields: speech input (spoken questions); None: off
    qformer: dict[str, Any] = field(default_factory=dict)  # bridges.qformer.QFormerSpec fields
    flamingo: dict[str, Any] = field(default_factory=dict)  # bridges.flamingo.FlamingoSpec fields
    shots: int = 0  # flamingo: training rows interleave up to this many extra (image, text) examples
    stage: int = 2  # blip2: 1 = Q-Former representation learning (ITC + ITM + ITG on captions), 2 = prompt the LM

    def __post_init__(self) -> None:
        if self.arch != "mllm":
            raise ConfigError(f"arch must be 'mllm', got {self.arch!r}", field="arch")
        if self.bridge not in BRIDGES:
            raise ConfigError(f"must be one of {list(BRIDGES)}, got {self.bridge!r}", field="bridge")
        if self.input not in INPUTS:
            raise ConfigError(f"must be one of {list(INPUTS)}, got {self.input!r}", field="input")
        bad = [k for k in self.data if k not in DATA_KINDS]
        if not self.data or bad:
            raise ConfigError(f"must list target kinds from {list(DATA_KINDS)}, got {self.data!r}", field="data")
        if not self.langs or len(set(self.langs)) < len(self.langs):
            raise ConfigError(f"must be a non-empty list of distinct languages, got {self.langs!r}", field="langs")
        require_ints(self, ("sequences_per_sample", "max_len"), "")
        require_ints(self, ("shots",), "", low=0)
        if self.stage not in (1, 2) or (self.stage == 1 and self.bridge != "blip2"):
            raise ConfigError(f"stage is 1 or 2 (1 only for the blip2 bridge), got {self.stage!r}", field="stage")
        if self.stage == 1 and "captions" not in self.data:
            raise ConfigError("BLIP-2 stage 1 learns from captions: data must list 'captions'", field="data")
        if self.shots and self.bridge != "flamingo":
            raise ConfigError("interleaved shots are for the flamingo bridge", field="shots")


register_model_config("mllm")(MLLMConfig)

__all__ = ["AudioSpec", "BRIDGES", "DATA_KINDS", "INPUTS", "LMSpec", "LM_TRAINING", "LoraSpec", "MLLMConfig", "ProjectorSpec",
           "VisionSpec"]
