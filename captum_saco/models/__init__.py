"""Models as classifiers for the attribution methods and metrics: zero-shot
CLIP and SigLIP classifiers over text prompts."""

from captum_saco.models.zero_shot import ZeroShotClassifier, load_zero_shot_classifier

__all__ = ["ZeroShotClassifier", "load_zero_shot_classifier"]
