"""Models by name (timm, Hugging Face, torchvision, your own) with the
preprocessing they were trained with."""

from captum_saco.models.loading import LoadedModel, ModelLoadError, load_checkpoint, load_model
from captum_saco.models.preprocessing import Preprocessing

__all__ = ["LoadedModel", "ModelLoadError", "Preprocessing", "load_checkpoint", "load_model"]
