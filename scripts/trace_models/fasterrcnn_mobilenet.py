"""Train torchvision's Faster R-CNN (MobileNetV3-Large 320 FPN, random init) on random boxes.

Detection training: images of different sizes, a variable number of ground-truth boxes per
image, region proposals and RoI sampling, so tensor shapes change inside every iteration.
Forward returns the loss dict; backward; SGD with momentum. CPU.
"""

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=2)
    gen = torch.Generator().manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    sizes = [320, 288, 352, 320, 256, 384, 320, 300]
    for step in range(a.steps):
        size = sizes[step % len(sizes)]
        images = [torch.rand(3, size, size, generator=gen) for _ in range(a.batch)]
        targets = zoo.random_targets(a.batch, size, gen, 91)
        opt.zero_grad(set_to_none=True)
        losses = model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        opt.step()
        print(f"step {step} size {size} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
