"""Train torchvision's EfficientNet-B0 (random init) on random images, CPU.

Many small tensors: depthwise convolutions, squeeze-and-excitation blocks, stochastic depth.
Forward, cross-entropy, backward, RMSprop (as in the EfficientNet recipe).
"""

import argparse

import torch
import torchvision


def main() -> None:
    """Parse options and train."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=128)
    a = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=100)
    model.train()
    opt = torch.optim.RMSprop(
        model.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(a.steps):
        images = torch.randn(a.batch, 3, a.image, a.image)
        labels = torch.randint(0, 100, (a.batch,))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
