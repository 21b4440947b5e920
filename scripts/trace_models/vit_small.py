"""Train timm's ViT-Small/16 (random init) on random images for a few iterations on CPU.

Forward, cross-entropy, backward, gradient clipping, AdamW.
"""

import argparse

import timm
import torch


def main() -> None:
    """Parse options and train."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--image", type=int, default=224)
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=100, img_size=a.image
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(a.steps):
        images = torch.randn(a.batch, 3, a.image, a.image)
        labels = torch.randint(0, 100, (a.batch,))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
