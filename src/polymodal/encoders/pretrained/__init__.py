"""Pretrained towers (extra ``[hf]``): Hugging Face CLIP / SigLIP / CLAP checkpoints and sentence-transformers
text models. Importing this package only registers the encoder names; transformers is imported when a tower is
built, so a missing extra surfaces as ``MissingExtra`` with the install hint at that point.

Registered: hf_clip_text, hf_clip_image, hf_siglip_text, hf_siglip_image, hf_clap_text, hf_clap_audio, st_text.
"""

from .clap import HFClapAudio
from .hf_clip import HFImageTower, HFTextTower, PretrainedTower, clear_cache
from .sentence import SentenceTower, default_minilm_dir

__all__ = [
    "HFClapAudio",
    "HFImageTower",
    "HFTextTower",
    "PretrainedTower",
    "SentenceTower",
    "clear_cache",
    "default_minilm_dir",
]
