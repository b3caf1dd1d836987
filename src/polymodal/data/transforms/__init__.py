"""Per-modality transforms: image, audio (log-mel via torch.stft), video, text tokenizers, and
`SampleTransform` that applies them to a `Sample` in the layouts `collate` pads."""

from .audio import AudioTransform, LogMel, hz_to_mel, mel_filterbank, mel_to_hz, resample
from .compose import SampleTransform
from .image import CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD, ImageTransform
from .text import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, tokenizer_from_dict
from .video import VideoTransform, sample_frame_indices

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "HALF_MEAN", "HALF_STD",
    "AudioTransform", "ByteTokenizer", "CharTokenizer", "HFTokenizer", "ImageTransform", "LogMel",
    "SampleTransform", "Tokenizer", "VideoTransform",
    "hz_to_mel", "mel_filterbank", "mel_to_hz", "resample", "sample_frame_indices", "tokenizer_from_dict",
]
