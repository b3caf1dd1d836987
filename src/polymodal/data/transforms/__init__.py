"""Per-modality transforms: image, audio (log-mel via torch.stft), video, text tokenizers."""
