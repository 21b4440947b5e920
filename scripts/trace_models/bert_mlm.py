"""Train Hugging Face BERT-base (random init) with masked-language modelling on random tokens.

15% of the tokens are masked (label -100 elsewhere), with padding and an attention mask on
part of the batch. Forward, backward, AdamW. CPU.
"""

import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: zoo
import zoo  # noqa: E402


def main() -> None:
    """Parse options and train."""
    a = zoo.options(__doc__, batch=4, seq=128)
    config = BertConfig()  # bert-base: 12 layers, 12 heads, hidden 768, vocab 30522
    model = BertForMaskedLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    mask_id = 103
    for step in range(a.steps):
        ids = torch.randint(1000, config.vocab_size, (a.batch, a.seq))
        attention = torch.ones(a.batch, a.seq, dtype=torch.long)
        attention[a.batch // 2 :, a.seq * 3 // 4 :] = 0  # padded tail on half the batch
        masked = (torch.rand(a.batch, a.seq) < 0.15) & attention.bool()
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
