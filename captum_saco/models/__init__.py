"""Models by name (timm, Hugging Face, torchvision, your own) with the
preprocessing they were trained with, and zero-shot CLIP and SigLIP
classifiers over text prompts."""

from captum_saco.models.loading import LoadedModel, ModelLoadError, load_checkpoint, load_model
from captum_saco.models.preprocessing import Preprocessing
from captum_saco.models.zero_shot import ZeroShotClassifier, load_zero_shot_classifier

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "Preprocessing",
    "ZeroShotClassifier",
    "load_checkpoint",
    "load_model",
    "load_zero_shot_classifier",
]
