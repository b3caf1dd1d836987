"""Models composed from encoders, projections, fusions and losses, built by arch name (`ARCHS`)."""

# Importing the arch modules registers their builders (ARCHS) and configs (MODEL_CONFIGS).
from .alignment import AlignmentConfig, AlignmentModel, Features, build_alignment_model, merge_features
from .asr import AsrConfig, SpeechRecognizer
from .captioner import VisionTextConfig, VisionTextGenerator
from .classifier import FusionClassifier, FusionModel, build_fusion_model
from .embedding import EmbeddingModel
from .front import RUNTIMES, is_polymodal_run, load_embedding_model
from .fusion_config import FusionModelConfig
from .lm import CausalLM, LMConfig
from .loading import load_model, resolve_run
from .mllm import MultimodalLM  # noqa: F401  (registers arch mllm)
from .mllm_config import MLLMConfig  # noqa: F401
from .mllm_front import MLLMChat, load_mllm  # noqa: F401  (registers the mllm chat loader)
from .registry import ARCHS, MODEL_CONFIGS, build_model, model_config
from .t2i_ar import TokenAR  # noqa: F401  (registers arch token_ar)
from .t2i_autoencoder import ImageAutoencoder  # noqa: F401  (registers arch image_autoencoder)
from .t2i_diffusion import LatentDiffusion  # noqa: F401  (registers arch latent_diffusion)
from .videobert import VideoBert, VideoBertConfig  # noqa: F401  (registers arch videobert)
from .vl_encoder import VLEncoder, VLEncoderConfig

__all__ = ["ARCHS", "MODEL_CONFIGS", "AlignmentConfig", "AlignmentModel", "AsrConfig", "CausalLM", "EmbeddingModel", "Features",
           "FusionClassifier", "FusionModel", "FusionModelConfig", "LMConfig", "RUNTIMES", "SpeechRecognizer", "VisionTextConfig",
           "VisionTextGenerator", "VLEncoder", "VLEncoderConfig", "build_alignment_model", "build_fusion_model",
           "build_model", "is_polymodal_run", "load_embedding_model", "load_model", "merge_features",
           "model_config", "resolve_run"]
