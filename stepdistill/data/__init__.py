"""Datasets: embedded benchmarks (toy2d, digits, natural-image patches) and user data."""

from .digits import DigitsDataset, Split, load_digits_tensors, split_indices, training_split
from .folders import CorruptImageError, FolderPairs, ImageFolder
from .patches import IndexLabelled, PatchDataset, natural_image_names, natural_images
from .prompts import PromptDataset, PromptFileError, load_prompts
from .toy2d import GaussianMixture, GaussianMixtureDenoiser

__all__ = [
    "DigitsDataset", "Split", "load_digits_tensors", "split_indices", "training_split",
    "CorruptImageError", "FolderPairs", "ImageFolder",
    "IndexLabelled", "PatchDataset", "natural_image_names", "natural_images",
    "PromptDataset", "PromptFileError", "load_prompts",
    "GaussianMixture", "GaussianMixtureDenoiser",
]
