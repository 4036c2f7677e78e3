"""cascade-booth: cascaded DreamBooth (Ruiz et al. 2022, arXiv 2208.12242) for DeepFloyd IF."""

__version__ = "0.1.0"
