"""Train torchvision's ResNet-50 (random init) on random images for a few iterations on CPU.

Forward, cross-entropy with label smoothing, backward, SGD with Nesterov momentum.
"""

import argparse

import torch
import torchvision


def main() -> None:
    """Parse options and train."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--image", type=int, default=128)
    a = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000)
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for step in range(a.steps):
        images = torch.randn(a.batch, 3, a.image, a.image)
        labels = torch.randint(0, 1000, (a.batch,))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
