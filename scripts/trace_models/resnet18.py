"""Train torchvision's ResNet-18 (random init) on random images for a few iterations on CPU.

A plain training loop: forward, cross-entropy, backward, SGD with momentum. Run standalone
(``python resnet18.py``) or under ``python -m timeshare capture``.
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
        lambda: torchvision.models.resnet18(num_classes=100),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
        100,
        torch.nn.CrossEntropyLoss(),
    )


if __name__ == "__main__":
    main()
