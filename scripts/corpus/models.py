"""The trace corpus: every model, its family, its split and its training recipe.

One row per trace. ``family`` groups architectures that share code (and so allocation
patterns); the split is by family: every trace of a held-out family is held out, so no choice
made on the tuning set has seen that family's code. ``shapes`` is "fixed" (the same sizes every
iteration) or "varying" (sequence lengths, image sizes or routing change between iterations).
All models are built from configs in code, random init: no weights are downloaded.

Used by scripts/corpus/train.py (builds and trains one row) and scripts/corpus/capture.sh
(lists the rows) and scripts/corpus/evaluate.py (splits and evaluates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ROWS", "Row", "by_name", "HELD_OUT_FAMILIES"]


@dataclass(frozen=True)
class Row:
    """One trace of the corpus: which model, and how it is trained."""

    name: str
    family: str
    kind: str  # "vision", "detection", "segmentation", "lm", "mlm", "seq2seq"
    builder: str  # key into train.py's BUILDERS
    shapes: str = "fixed"  # "fixed" or "varying"
    batch: int = 4
    image: int = 64
    seq: int = 64  # fixed sequence length (varying: see seqs)
    seqs: tuple[int, ...] = ()  # one per iteration when shapes == "varying"
    optimizer: str = "sgd"  # sgd, adamw, adam, rmsprop, adagrad
    bf16: bool = False  # torch.autocast("cpu", dtype=torch.bfloat16)
    accum: int = 1  # micro-batches per optimizer step
    eval_every: int = 0  # an eval pass (no_grad forward) after every n-th step (0: none)
    iterations: int = 5
    options: dict = field(default_factory=dict, hash=False, compare=False)


# Families held out: never used for any choice (features, thresholds, architecture, weights).
HELD_OUT_FAMILIES = frozenset(
    {"densenet", "swin", "deit", "llama", "mixtral", "electra", "ssd", "shufflenet"}
)

_VAR = (48, 80, 64, 96, 56, 72)

ROWS: tuple[Row, ...] = (
    # --- CNNs -------------------------------------------------------------------------------
    Row("resnet18_sgd_b8", "resnet", "vision", "resnet18", batch=8),
    Row(
        "resnet34_adamw_bf16", "resnet", "vision", "resnet34", batch=4, optimizer="adamw", bf16=True
    ),
    Row("resnet50_sgd_accum2", "resnet", "vision", "resnet50", batch=2, accum=2),
    Row(
        "mobilenet_v2_rmsprop_eval",
        "mobilenet",
        "vision",
        "mobilenet_v2",
        batch=8,
        optimizer="rmsprop",
        eval_every=1,
    ),
    Row(
        "mobilenet_v3s_adam_b16",
        "mobilenet",
        "vision",
        "mobilenet_v3_small",
        batch=16,
        optimizer="adam",
    ),
    Row("mnasnet_sgd_b8", "mobilenet", "vision", "mnasnet0_5", batch=8),
    Row(
        "efficientnet_b0_adamw",
        "efficientnet",
        "vision",
        "efficientnet_b0",
        batch=4,
        optimizer="adamw",
    ),
    Row("regnet_y400_sgd_eval", "regnet", "vision", "regnet_y_400mf", batch=8, eval_every=2),
    Row(
        "convnext_atto_adamw_bf16",
        "convnext",
        "vision",
        "timm:convnext_atto",
        batch=4,
        optimizer="adamw",
        bf16=True,
    ),
    Row("squeezenet_sgd_b16", "squeezenet", "vision", "squeezenet1_1", batch=16),
    Row("densenet121_sgd_b4", "densenet", "vision", "densenet121", batch=4),
    Row(
        "densenet121_adam_accum2_eval",
        "densenet",
        "vision",
        "densenet121",
        batch=2,
        optimizer="adam",
        accum=2,
        eval_every=1,
    ),
    Row("shufflenet_v2_sgd_b16", "shufflenet", "vision", "shufflenet_v2_x0_5", batch=16),
    Row(
        "shufflenet_v2_adamw_varimg",
        "shufflenet",
        "vision",
        "shufflenet_v2_x0_5",
        batch=8,
        shapes="varying",
        seqs=(64, 96, 48, 80, 64),
        optimizer="adamw",
    ),
    # --- detection / segmentation ------------------------------------------------------------
    Row(
        "fasterrcnn_mnv3_sgd",
        "fasterrcnn",
        "detection",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        batch=2,
        image=160,
        shapes="varying",
    ),
    Row(
        "ssdlite_mnv3_sgd",
        "ssd",
        "detection",
        "ssdlite320_mobilenet_v3_large",
        batch=2,
        image=160,
        shapes="varying",
    ),
    Row(
        "lraspp_mnv3_adam",
        "segmentation",
        "segmentation",
        "lraspp_mobilenet_v3_large",
        batch=4,
        image=96,
        optimizer="adam",
    ),
    # --- vision transformers ------------------------------------------------------------------
    Row("vit_tv_adamw", "vit", "vision", "vit_tiny_tv", batch=8, optimizer="adamw"),
    Row(
        "vit_tv_adamw_bf16_accum2",
        "vit",
        "vision",
        "vit_tiny_tv",
        batch=4,
        optimizer="adamw",
        bf16=True,
        accum=2,
    ),
    Row(
        "deit_tiny_timm_adamw",
        "deit",
        "vision",
        "timm:deit_tiny_patch16_224",
        batch=8,
        optimizer="adamw",
    ),
    Row(
        "deit_tiny_timm_sgd_eval",
        "deit",
        "vision",
        "timm:deit_tiny_patch16_224",
        batch=4,
        eval_every=1,
    ),
    Row(
        "swin_tiny_timm_adamw",
        "swin",
        "vision",
        "timm:swin_tiny_patch4_window7_224",
        batch=2,
        optimizer="adamw",
    ),
    Row("swin_t_tv_sgd_bf16", "swin", "vision", "swin_t", batch=2, bf16=True),
    # --- encoder LMs --------------------------------------------------------------------------
    Row("bert_mlm_adamw", "bert", "mlm", "bert", batch=4, seq=64, optimizer="adamw"),
    Row(
        "bert_mlm_adamw_varlen",
        "bert",
        "mlm",
        "bert",
        batch=4,
        shapes="varying",
        seqs=_VAR,
        optimizer="adamw",
    ),
    Row(
        "roberta_mlm_adam_eval",
        "bert",
        "mlm",
        "roberta",
        batch=4,
        seq=64,
        optimizer="adam",
        eval_every=1,
    ),
    Row("electra_mlm_adamw", "electra", "mlm", "electra", batch=4, seq=64, optimizer="adamw"),
    Row(
        "electra_mlm_adamw_varlen_bf16",
        "electra",
        "mlm",
        "electra",
        batch=4,
        shapes="varying",
        seqs=_VAR,
        optimizer="adamw",
        bf16=True,
    ),
    # --- decoder LMs --------------------------------------------------------------------------
    Row("gpt2_adamw", "gpt2", "lm", "gpt2", batch=4, seq=64, optimizer="adamw"),
    Row(
        "gpt2_adamw_varlen",
        "gpt2",
        "lm",
        "gpt2",
        batch=4,
        shapes="varying",
        seqs=_VAR,
        optimizer="adamw",
    ),
    Row("gpt2_sgd_accum2_eval", "gpt2", "lm", "gpt2", batch=2, seq=64, accum=2, eval_every=1),
    Row("opt_adamw_bf16", "opt", "lm", "opt", batch=4, seq=64, optimizer="adamw", bf16=True),
    Row("llama_adamw", "llama", "lm", "llama", batch=4, seq=64, optimizer="adamw"),
    Row(
        "llama_adamw_varlen",
        "llama",
        "lm",
        "llama",
        batch=4,
        shapes="varying",
        seqs=_VAR,
        optimizer="adamw",
    ),
    Row("mixtral_moe_adamw", "mixtral", "lm", "mixtral", batch=4, seq=64, optimizer="adamw"),
    Row(
        "mixtral_moe_adamw_varlen",
        "mixtral",
        "lm",
        "mixtral",
        batch=2,
        shapes="varying",
        seqs=_VAR,
        optimizer="adamw",
        accum=2,
    ),
    # --- encoder-decoder ----------------------------------------------------------------------
    Row("t5_adagrad", "t5", "seq2seq", "t5", batch=4, seq=48, optimizer="adagrad"),
)


def by_name(name: str) -> Row:
    """The row called ``name`` (KeyError with the known names otherwise)."""
    for r in ROWS:
        if r.name == name:
            return r
    raise KeyError(f"no corpus row {name!r}; known: {', '.join(r.name for r in ROWS)}")


def split_of(row: Row) -> str:
    """'heldout' or 'tuning', by the row's family."""
    return "heldout" if row.family in HELD_OUT_FAMILIES else "tuning"
