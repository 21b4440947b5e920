"""Train torchvision's ResNet-50 (random init) on random images for a few iterations on CPU.

Forward, cross-entropy with label smoothing, backward, SGD with Nesterov momentum.
"""

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=4, image=128)
    zoo.train_classifier(
        a,
        lambda: torchvision.models.resnet50(num_classes=1000),
        lambda m: torch.optim.SGD(
            m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5
        ),
        1000,
        torch.nn.CrossEntropyLoss(label_smoothing=0.1),
    )


if __name__ == "__main__":
    main()
