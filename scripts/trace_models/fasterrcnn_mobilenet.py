"""Train torchvision's Faster R-CNN (MobileNetV3-Large 320 FPN, random init) on random boxes.

Detection training: images of different sizes, a variable number of ground-truth boxes per
image, region proposals and RoI sampling, so tensor shapes change inside every iteration.
Forward returns the loss dict; backward; SGD with momentum. CPU.
"""

import argparse

import torch
import torchvision


def random_targets(n: int, size: int, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Random boxes (1..6 per image) and labels for ``n`` images of ``size`` pixels."""
    targets = []
    for _ in range(n):
        k = int(torch.randint(1, 7, (1,), generator=gen))
        xy = torch.rand(k, 2, generator=gen) * (size * 0.7)
        wh = torch.rand(k, 2, generator=gen) * (size * 0.25) + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        labels = torch.randint(1, 91, (k,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def main() -> None:
    """Parse options and train."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
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
        targets = random_targets(a.batch, size, gen)
        opt.zero_grad(set_to_none=True)
        losses = model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        opt.step()
        print(f"step {step} size {size} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
