"""Train Hugging Face GPT-2 small (124M, random init) on random tokens of VARYING length, CPU.

Each step draws its sequence length from a fixed seeded list (as with length-bucketed batches),
so the allocation sizes change from one iteration to the next. Otherwise as gpt2_fixed.py.
"""

import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402

SEQ_LENGTHS = [96, 160, 64, 128, 192, 80, 144, 112]


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=2)
    config = GPT2Config()
    model = GPT2LMHeadModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    for step in range(a.steps):
        seq = SEQ_LENGTHS[step % len(SEQ_LENGTHS)]
        tokens = torch.randint(0, config.vocab_size, (a.batch, seq))
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        print(f"step {step} seq {seq} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
