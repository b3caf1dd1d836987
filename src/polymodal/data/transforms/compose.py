"""`SampleTransform`: one `Sample` -> ``dict[modality, Tensor]`` in the layouts `collate` pads
(``polymodal.data.sample.TIME_AXIS``): text ``(L,)`` long, image ``(3, S, S)``, audio ``(n_mels, T)``,
video ``(T, 3, S, S)``. A modality whose transform is ``None`` is dropped (its batch mask is all False)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ConfigError, InvalidInput
from ..sample import Sample
from .audio import AudioTransform, ClapAudioTransform, audio_transform_from_dict
from .image import ImageTransform
from .text import ByteTokenizer, Tokenizer, tokenizer_from_dict
from .video import VideoTransform

_KEYS = ("audio", "image", "max_text_len", "text", "video")


@dataclass(frozen=True)
class SampleTransform:
    """Per-modality transforms applied to a `Sample`.

    Evaluation by default. ``augment(generator)`` returns the training variant: the same config, with random
    crops / flips / frame choice / audio offsets drawn from ``generator`` (deterministic given its seed). Give each
    DataLoader worker its own seeded generator.
    """

    text: Tokenizer | None = None
    image: ImageTransform | None = None
    audio: AudioTransform | ClapAudioTransform | None = None
    video: VideoTransform | None = None
    max_text_len: int = 64
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_text_len, int) or self.max_text_len < 2:
            raise ConfigError(f"max_text_len must be an int >= 2 (bos + eos), got {self.max_text_len!r}",
                              field="max_text_len")

    @classmethod
    def default(cls) -> SampleTransform:
        """Image 64x64 ([-1, 1]), audio 16 kHz 64-mel log-mel, video 8 frames of 64x64, UTF-8 byte tokens."""
        return cls(text=ByteTokenizer(), image=ImageTransform(size=64), audio=AudioTransform(),
                   video=VideoTransform(frames=8, image=ImageTransform(size=64)), max_text_len=64)

    @property
    def train(self) -> bool:
        return self.generator is not None

    def augment(self, generator: torch.Generator) -> SampleTransform:
        """The training variant drawing its randomness from ``generator``."""
        if not isinstance(generator, torch.Generator):
            raise ConfigError("augment() needs a torch.Generator", field="generator")
        return dataclasses.replace(self, generator=generator)

    def eval(self) -> SampleTransform:
        """The deterministic variant (no augmentation)."""
        return dataclasses.replace(self, generator=None)

    def __call__(self, sample: Sample) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        g = self.generator
        try:
            if self.audio is not None and sample.audio is not None:
                assert sample.sample_rate is not None  # Sample guarantees a rate with audio
                out["audio"] = self.audio(sample.audio, int(sample.sample_rate), g)
            if self.image is not None and sample.image is not None:
                out["image"] = self.image(sample.image, g)
            if self.text is not None and sample.text is not None:
                ids = self.text.encode(sample.text, self.max_text_len)
                out["text"] = torch.tensor(ids, dtype=torch.long)
            if self.video is not None and sample.video is not None:
                out["video"] = self.video(sample.video, g)
        except InvalidInput as exc:
            # Name the sample: a transform only knows the array it was given.
            raise InvalidInput(exc.message, field=exc.field, source=sample.source or f"sample {sample.id}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "audio": self.audio.to_dict() if self.audio is not None else None,
            "image": self.image.to_dict() if self.image is not None else None,
            "max_text_len": self.max_text_len,
            "text": self.text.to_dict() if self.text is not None else None,
            "video": self.video.to_dict() if self.video is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleTransform:
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object, got {type(d).__name__}", field="transform")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown keys {unknown}; expected some of {list(_KEYS)}", field="transform")

        def part(key: str, build: Any) -> Any:
            return None if d.get(key) is None else build(d[key])

        return cls(
            text=part("text", tokenizer_from_dict),
            image=part("image", ImageTransform.from_dict),
            audio=part("audio", audio_transform_from_dict),
            video=part("video", VideoTransform.from_dict),
            max_text_len=int(d.get("max_text_len", 64)),
        )
