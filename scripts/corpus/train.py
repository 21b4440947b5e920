"""Train one corpus row (scripts/corpus/models.py) on random data for a few iterations, on CPU.

``python train.py ROW`` runs as an ordinary training script; under ``python -m timeshare.capture``
it marks the start of every iteration (micro-batches of gradient accumulation and the eval pass
after the step belong to the iteration). Models are built from configs in code with random
initialisation: no weights are downloaded (no hub is reachable here).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: zoo
import zoo  # noqa: E402
from models import Row, by_name  # noqa: E402

try:
    from timeshare.capture import mark_iteration
except ImportError:  # run standalone

    def mark_iteration() -> None:
        """No capture is running."""


VOCAB = 4096
NUM_CLASSES = 100


# ---- builders ------------------------------------------------------------------------------


def _tv(name: str, **kw: Any) -> Callable[[Row], torch.nn.Module]:
    def build(row: Row) -> torch.nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES, **kw)

    return build


def _timm(name: str) -> Callable[[Row], torch.nn.Module]:
    def build(row: Row) -> torch.nn.Module:
        import timm

        kw: dict[str, Any] = {
            "pretrained": False,
            "num_classes": NUM_CLASSES,
            "img_size": row.image,
        }
        if "swin" in name:
            kw["window_size"] = 4
        if "convnext" in name:
            kw.pop("img_size")
        return timm.create_model(name, **kw)

    return build


def _vit_tiny_tv(row: Row) -> torch.nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=row.image,
        patch_size=8,
        num_layers=4,
        num_heads=4,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=NUM_CLASSES,
    )


def _swin_t(row: Row) -> torch.nn.Module:
    from torchvision.models import SwinTransformer

    # swin_t's layout at half width, 4x4 windows for the small images.
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=48,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=[4, 4],
        stochastic_depth_prob=0.1,
        num_classes=NUM_CLASSES,
    )


def _detection(name: str) -> Callable[[Row], torch.nn.Module]:
    def build(row: Row) -> torch.nn.Module:
        import torchvision

        fn = getattr(torchvision.models.detection, name)
        return fn(weights=None, weights_backbone=None, num_classes=21)

    return build


def _segmentation(name: str) -> Callable[[Row], torch.nn.Module]:
    def build(row: Row) -> torch.nn.Module:
        import torchvision

        fn = getattr(torchvision.models.segmentation, name)
        return fn(weights=None, weights_backbone=None, num_classes=21)

    return build


def _hf(kind: str) -> Callable[[Row], torch.nn.Module]:
    def build(row: Row) -> torch.nn.Module:
        import transformers as tf

        small = dict(vocab_size=VOCAB)
        if kind == "bert":
            return tf.BertForMaskedLM(
                tf.BertConfig(
                    hidden_size=128,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    intermediate_size=512,
                    max_position_embeddings=256,
                    **small,
                )
            )
        if kind == "roberta":
            return tf.RobertaForMaskedLM(
                tf.RobertaConfig(
                    hidden_size=128,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    intermediate_size=512,
                    max_position_embeddings=260,
                    **small,
                )
            )
        if kind == "electra":
            return tf.ElectraForMaskedLM(
                tf.ElectraConfig(
                    embedding_size=64,
                    hidden_size=128,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    intermediate_size=512,
                    max_position_embeddings=256,
                    **small,
                )
            )
        if kind == "gpt2":
            return tf.GPT2LMHeadModel(
                tf.GPT2Config(n_embd=128, n_layer=4, n_head=4, n_positions=256, **small)
            )
        if kind == "opt":
            return tf.OPTForCausalLM(
                tf.OPTConfig(
                    hidden_size=128,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    ffn_dim=512,
                    word_embed_proj_dim=128,
                    max_position_embeddings=256,
                    **small,
                )
            )
        if kind == "llama":
            return tf.LlamaForCausalLM(
                tf.LlamaConfig(
                    hidden_size=128,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    intermediate_size=344,
                    max_position_embeddings=256,
                    **small,
                )
            )
        if kind == "mixtral":
            return tf.MixtralForCausalLM(
                tf.MixtralConfig(
                    hidden_size=128,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    intermediate_size=256,
                    num_local_experts=4,
                    num_experts_per_tok=2,
                    max_position_embeddings=256,
                    **small,
                )
            )
        if kind == "t5":
            return tf.T5ForConditionalGeneration(
                tf.T5Config(
                    d_model=128,
                    d_kv=32,
                    d_ff=512,
                    num_layers=3,
                    num_heads=4,
                    decoder_start_token_id=0,
                    **small,
                )
            )
        raise KeyError(kind)

    return build


BUILDERS: dict[str, Callable[[Row], torch.nn.Module]] = {
    "resnet18": _tv("resnet18"),
    "resnet34": _tv("resnet34"),
    "resnet50": _tv("resnet50"),
    "mobilenet_v2": _tv("mobilenet_v2"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "mnasnet0_5": _tv("mnasnet0_5"),
    "efficientnet_b0": _tv("efficientnet_b0"),
    "regnet_y_400mf": _tv("regnet_y_400mf"),
    "squeezenet1_1": _tv("squeezenet1_1"),
    "densenet121": _tv("densenet121"),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "vit_tiny_tv": _vit_tiny_tv,
    "swin_t": _swin_t,
    "fasterrcnn_mobilenet_v3_large_320_fpn": _detection("fasterrcnn_mobilenet_v3_large_320_fpn"),
    "ssdlite320_mobilenet_v3_large": _detection("ssdlite320_mobilenet_v3_large"),
    "lraspp_mobilenet_v3_large": _segmentation("lraspp_mobilenet_v3_large"),
    **{k: _hf(k) for k in ("bert", "roberta", "electra", "gpt2", "opt", "llama", "mixtral", "t5")},
}


def build(row: Row) -> torch.nn.Module:
    """The row's model, random init."""
    if row.builder.startswith("timm:"):
        return _timm(row.builder[5:])(row)
    return BUILDERS[row.builder](row)


def make_optimizer(row: Row, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The row's optimizer."""
    o = row.optimizer
    if o == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.05)
    if o == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=1e-3, momentum=0.9)
    if o == "adagrad":
        return torch.optim.Adagrad(params, lr=1e-2)
    raise KeyError(o)


# ---- one micro-batch per kind --------------------------------------------------------------


def loss_of(row: Row, model: torch.nn.Module, it: int, gen: torch.Generator) -> torch.Tensor:
    """Forward one micro-batch of random data and return its loss."""
    varying = row.shapes == "varying"
    if row.kind == "vision":
        size = row.seqs[it % len(row.seqs)] if row.seqs else row.image
        x = torch.randn(row.batch, 3, size, size, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (row.batch,), generator=gen)
        return torch.nn.functional.cross_entropy(model(x), y)
    if row.kind == "detection":
        size = (
            (row.image, row.image + 32, row.image - 32, row.image + 16)[it % 4]
            if varying
            else row.image
        )
        images = [torch.rand(3, size, size, generator=gen) for _ in range(row.batch)]
        losses = model(images, zoo.random_targets(row.batch, size, gen, 21))
        return sum(losses.values())
    if row.kind == "segmentation":
        x = torch.randn(row.batch, 3, row.image, row.image, generator=gen)
        y = torch.randint(0, 21, (row.batch, row.image, row.image), generator=gen)
        return torch.nn.functional.cross_entropy(model(x)["out"], y)
    seq = row.seqs[it % len(row.seqs)] if varying else row.seq
    tokens = torch.randint(0, VOCAB, (row.batch, seq), generator=gen)
    if row.kind == "lm":
        return model(input_ids=tokens, labels=tokens).loss
    if row.kind == "mlm":
        labels = torch.full_like(tokens, -100)
        mask = torch.rand(tokens.shape, generator=gen) < 0.15
        labels[mask] = tokens[mask]
        inputs = tokens.masked_fill(mask, 3)
        return model(input_ids=inputs, labels=labels).loss
    if row.kind == "seq2seq":
        target = torch.randint(0, VOCAB, (row.batch, max(seq // 2, 8)), generator=gen)
        return model(input_ids=tokens, labels=target).loss
    raise KeyError(row.kind)


def train(row: Row, iterations: int) -> None:
    """The training loop: per iteration, accum micro-batches, a step, maybe an eval pass."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build(row)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = make_optimizer(row, params)
    for it in range(iterations):
        mark_iteration()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(row.accum):
            amp = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if row.bf16
                else contextlib.nullcontext()
            )
            with amp:
                loss = loss_of(row, model, it, gen) / row.accum
            loss.backward()
            total += float(loss)
        if row.kind in ("lm", "mlm", "seq2seq"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if row.eval_every and (it + 1) % row.eval_every == 0 and row.kind != "detection":
            model.eval()
            with torch.no_grad():
                loss_of(row, model, it, gen)
            model.train()
        print(f"{row.name} iteration {it} loss {total:.4f}", flush=True)


def main() -> None:
    """Parse the row name and train it."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("row")
    p.add_argument("--iterations", type=int, default=0, help="default: the row's own")
    a = p.parse_args()
    row = by_name(a.row)
    train(row, a.iterations or row.iterations)


if __name__ == "__main__":
    main()
