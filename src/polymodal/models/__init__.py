"""Models composed from encoders, projections and losses."""

from .alignment import AlignmentModel, Features, build_alignment_model, merge_features

__all__ = ["AlignmentModel", "Features", "build_alignment_model", "merge_features"]
