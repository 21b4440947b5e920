"""Train torchvision's EfficientNet-B0 (random init) on random images, CPU.

Many small tensors: depthwise convolutions, squeeze-and-excitation blocks, stochastic depth.
Forward, cross-entropy, backward, RMSprop (as in the EfficientNet recipe).
"""

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=8, image=128)
    zoo.train_classifier(
        a,
        lambda: torchvision.models.efficientnet_b0(num_classes=100),
        lambda m: torch.optim.RMSprop(
            m.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5
        ),
        100,
        torch.nn.CrossEntropyLoss(),
    )


if __name__ == "__main__":
    main()
