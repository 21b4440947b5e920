"""Train Hugging Face GPT-2 small (124M, random init) as a causal LM on random tokens, CPU.

Every step has the same sequence length (--seq). Forward with labels (shifted cross-entropy
inside the model), backward, gradient clipping, AdamW, linear warm-up schedule.
"""

import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=2, seq=128)
    config = GPT2Config()  # GPT-2 small: 12 layers, 12 heads, d_model 768, vocab 50257
    model = GPT2LMHeadModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    for step in range(a.steps):
        tokens = torch.randint(0, config.vocab_size, (a.batch, a.seq))
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        print(f"step {step} seq {a.seq} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
