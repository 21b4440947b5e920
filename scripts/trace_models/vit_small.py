"""Train timm's ViT-Small/16 (random init) on random images for a few iterations on CPU.

Forward, cross-entropy, backward, gradient clipping, AdamW.
"""

import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=4, image=224)
    zoo.train_classifier(
        a,
        lambda: timm.create_model(
            "vit_small_patch16_224", pretrained=False, num_classes=100, img_size=a.image
        ),
        lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.05),
        100,
        torch.nn.CrossEntropyLoss(),
        clip_norm=1.0,
    )


if __name__ == "__main__":
    main()
