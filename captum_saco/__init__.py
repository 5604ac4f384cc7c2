"""captum-saco: the SaCo faithfulness metric and Vision Transformer attribution
methods for Captum."""

__version__ = "0.1.0"
