"""A small Vision Transformer for the bundled 8x8 digits, built from a Hugging Face config with random weights (the
train stage trains it): 2x2 patches, so 16 patch tokens and a class token."""

from transformers import ViTConfig, ViTForImageClassification


def vit(hidden: int = 64, layers: int = 4, heads: int = 4, mlp: int = 256, patch: int = 2,
        classes: int = 10) -> ViTForImageClassification:
    config = ViTConfig(image_size=8, patch_size=patch, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=mlp, num_labels=classes)
    return ViTForImageClassification(config)
