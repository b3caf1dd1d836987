"""Pretrained towers (extra ``[hf]``): Hugging Face CLIP / SigLIP / Chinese-CLIP / ALIGN / CLAP checkpoints,
sentence-transformers text models, and OpenCLIP checkpoints (extra ``[openclip]``). Importing this package only
registers the encoder names; transformers (open_clip) is imported when a tower is built, so a missing extra
surfaces as ``MissingExtra`` with the install hint at that point.

Registered: hf_clip_text, hf_clip_image, hf_siglip_text, hf_siglip_image, hf_chinese_clip_text,
hf_chinese_clip_image, hf_align_text, hf_align_image, hf_clap_text, hf_clap_audio, st_text, open_clip_text,
open_clip_image.
"""

from . import align, chinese_clip, hf_clip, open_clip  # noqa: F401  (registers the encoder names)
from .clap import HFClapAudio
from .hf_clip import HFImageTower, HFTextTower, PretrainedTower
from .open_clip import OpenClipImage, OpenClipText
from .sentence import SentenceTower, default_minilm_dir

__all__ = [
    "HFClapAudio",
    "HFImageTower",
    "HFTextTower",
    "OpenClipImage",
    "OpenClipText",
    "PretrainedTower",
    "SentenceTower",
    "clear_cache",
    "default_minilm_dir",
]


def clear_cache() -> None:
    """Drop halves of loaded checkpoints (Hugging Face and OpenCLIP) that no tower has taken yet."""
    hf_clip.clear_cache()
    open_clip.clear_cache()
