#!/usr/bin/env python3
"""The corpus workflow after capture: convert, pretrain the cold-start LSTM, evaluate, tabulate.

usage: python3 scripts/corpus/evaluate.py [--build build] [--corpus out/corpus]
           [--pretrain] [--weights python/timeshare/lstm_pretrained.tsw] [--doc docs/predictor.md]
           [--split heldout|tuning|all] [--gpu-traces ../shared/traces-gpu]

- converts every captured snapshot (scripts/corpus/capture.sh) to NAME.tsev and NAME.iters
  (event indices of the iteration marks) in CORPUS-tsev/;
- ``--pretrain``: runs ``lstm_pretrain`` on the TUNING split only and writes the weights file
  (deterministic: same corpus and binary, same bytes);
- runs ``predict_eval`` (deterministic replay, online from the first event) with the predictor
  variants below on the chosen split and on the real GPU snapshots, and prints (and with --doc
  writes into docs/predictor.md between its corpus markers) one row per trace and variant:
  cold (first marked iteration), online (whole trace), warm (from the second mark).

Needs no torch: only numpy and the package's pure-Python snapshot reader (python/).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import HELD_OUT_FAMILIES, ROWS, split_of  # noqa: E402


def _snapshot_module():
    """python/timeshare/snapshot.py on its own (pure Python: the package needs its _C)."""
    spec = importlib.util.spec_from_file_location(
        "timeshare_snapshot", ROOT / "python" / "timeshare" / "snapshot.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_snap = _snapshot_module()
load_trace, write_tsev = _snap.load_trace, _snap.write_tsev

#: Variants reported, in the order of the tables: (predict_eval kind, label).
VARIANTS = (
    ("hybrid", "hybrid + pretrained LSTM"),
    ("hybrid_scratch", "hybrid + LSTM from scratch"),
    ("hybrid_nolstm", "hybrid without LSTM"),
    ("table", "context table"),
    ("lstm", "LSTM from scratch"),
    ("lstm_pre", "pretrained LSTM alone"),
)
# Inside the tuning set: families left out of pretraining to choose its options (--validate).
VALIDATION_FAMILIES = frozenset(
    {"efficientnet", "regnet", "convnext", "segmentation", "bert", "opt"}
)
BEGIN = "<!-- corpus: scripts/corpus/evaluate.py -->"
END = "<!-- /corpus -->"
GPU_TRACES = ROOT.parent / "shared" / "traces-gpu"


def convert(paths: list[Path], out: Path) -> list[Path]:
    """NAME.tsev + NAME.iters per snapshot (skipped when newer than the snapshot)."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for p in paths:
        name = p.name.split(".", 1)[0]
        tsev, iters = out / f"{name}.tsev", out / f"{name}.iters"
        if not (tsev.exists() and tsev.stat().st_mtime >= p.stat().st_mtime and iters.exists()):
            tr = load_trace(p)
            write_tsev(tr, tsev)
            iters.write_text("".join(f"{int(i)}\n" for i in tr.iteration_starts))
        done.append(tsev)
    return done


def run_eval(
    build: Path, tsev: list[Path], weights: Path, extra: str = ""
) -> dict[str, dict[str, dict[str, float]]]:
    """predict_eval over ``tsev``: {trace: {kind: {cold, online, warm, lstm_ans}}}."""
    kinds = ",".join(k for k, _ in VARIANTS)
    cmd = [
        str(build / "predict_eval"),
        "--kinds",
        kinds,
        "--weights",
        str(weights),
        *extra.split(),
        *map(str, tsev),
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for line in res.stdout.splitlines()[1:]:
        f = line.split()
        if len(f) < 13 or f[0] == "trace":
            continue
        out.setdefault(f[0], {})[f[1]] = {
            "cold": float(f[2]),
            "online": float(f[3]),
            "warm": float(f[4]),
            "lstm_ans": float(f[11]),
        }
    return out


def fmt(v: float) -> str:
    """Three decimals; '-' for a figure that does not exist (no marks)."""
    return "-" if v < 0 else f"{v:.3f}"


def render(
    results: dict[str, dict[str, dict[str, float]]], shapes: dict[str, str], title: str
) -> list[str]:
    """Markdown: one row per trace, cold / online / warm per variant, the best in bold."""
    lines = [
        f"**{title}**",
        "",
        "| trace | shapes | " + " | ".join(lab for _, lab in VARIANTS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in VARIANTS) + " |",
    ]
    for name in sorted(results):
        r = results[name]
        cells = []
        for k, _ in VARIANTS:
            if k not in r:
                cells.append("n/a")
                continue
            cells.append(" / ".join(fmt(r[k][x]) for x in ("cold", "online", "warm")))
        lines.append(f"| {name} | {shapes.get(name, 'real GPU')} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def summary(results: dict[str, dict[str, dict[str, float]]], shapes: dict[str, str]) -> list[str]:
    """Per variant: mean cold / online / warm, and where the pretrained hybrid wins."""
    lines = ["| variant | mean cold | mean online | mean warm |", "| --- | --- | --- | --- |"]
    for k, lab in VARIANTS:
        vals = {
            x: [r[k][x] for r in results.values() if k in r and r[k][x] >= 0]
            for x in ("cold", "online", "warm")
        }
        lines.append(
            f"| {lab} | "
            + " | ".join(f"{sum(v) / len(v):.3f}" if v else "-" for v in vals.values())
            + " |"
        )
    lines.append("")
    wins = {x: 0 for x in ("cold", "online")}
    n = 0
    for r in results.values():
        if "hybrid" not in r:
            continue
        n += 1
        for x in wins:
            others = [r[k][x] for k in ("table", "lstm") if k in r]
            wins[x] += all(r["hybrid"][x] > o for o in others)
    lines.append(
        f"Hybrid with the pretrained LSTM above both the context table and the "
        f"from-scratch LSTM: cold on {wins['cold']} of {n} traces, online on "
        f"{wins['online']} of {n}."
    )
    lines.append("")
    return lines


def main() -> int:
    """Parse options and run the workflow."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--build",
        default=str(ROOT / "build"),
        help="CMake build dir with predict_eval, lstm_pretrain",
    )
    ap.add_argument("--corpus", default=str(ROOT / "out" / "corpus"))
    ap.add_argument("--weights", default=str(ROOT / "python" / "timeshare" / "lstm_pretrained.tsw"))
    ap.add_argument("--pretrain", action="store_true")
    ap.add_argument("--pretrain-args", default="", help="extra lstm_pretrain options")
    ap.add_argument("--eval-args", default="", help="extra predict_eval options")
    ap.add_argument("--split", default="heldout", choices=["heldout", "tuning", "all"])
    ap.add_argument("--gpu-traces", default=str(GPU_TRACES))
    ap.add_argument("--doc", default=None, help="markdown file to write the tables into")
    ap.add_argument(
        "--validate",
        action="store_true",
        help="choices on the tuning set alone: pretrain on the tuning families "
        "outside VALIDATION_FAMILIES (weights to CORPUS/validate.tsw) and evaluate "
        "on the tuning traces of VALIDATION_FAMILIES",
    )
    a = ap.parse_args()
    build, corpus = Path(a.build), Path(a.corpus)
    snaps = sorted(corpus.glob("*.pkl.gz"))
    rows = {r.name: r for r in ROWS}
    missing = [n for n in rows if not (corpus / f"{n}.pkl.gz").exists()]
    if missing:
        print(
            f"evaluate: not captured (run scripts/corpus/capture.sh): {', '.join(missing)}",
            file=sys.stderr,
        )
    tsev = convert(
        [s for s in snaps if s.name.split(".", 1)[0] in rows], Path(str(corpus) + "-tsev")
    )
    by_split: dict[str, list[Path]] = {"tuning": [], "heldout": []}
    for t in tsev:
        by_split[split_of(rows[t.stem])].append(t)
    if a.validate:
        inner = [t for t in by_split["tuning"] if rows[t.stem].family not in VALIDATION_FAMILIES]
        by_split = {
            "tuning": inner,
            "heldout": [
                t for t in by_split["tuning"] if rows[t.stem].family in VALIDATION_FAMILIES
            ],
        }
        a.weights = str(corpus / "validate.tsw")
        a.pretrain, a.split, a.gpu_traces = True, "heldout", ""
    if a.pretrain:
        t0 = time.time()
        cmd = [
            str(build / "lstm_pretrain"),
            "--out",
            a.weights,
            *a.pretrain_args.split(),
            *map(str, by_split["tuning"]),
        ]
        subprocess.run(cmd, check=True)
        print(f"pretrain: {time.time() - t0:.0f} s on {len(by_split['tuning'])} tuning traces")
    chosen = by_split["tuning"] + by_split["heldout"] if a.split == "all" else by_split[a.split]
    shapes = {n: r.shapes for n, r in rows.items()}
    results = run_eval(build, chosen, Path(a.weights), a.eval_args)
    gpu_dir = Path(a.gpu_traces) if a.gpu_traces else None
    gpu = (
        convert(sorted(gpu_dir.glob("*.pkl.gz")), corpus.parent / "gpu-tsev")
        if gpu_dir and gpu_dir.is_dir()
        else []
    )
    gpu_results = run_eval(build, gpu, Path(a.weights), a.eval_args) if gpu else {}
    md = [
        BEGIN,
        "",
        f"Held-out families: {', '.join(sorted(HELD_OUT_FAMILIES))}. Each cell: cold (first "
        "marked iteration) / online (from event 1) / warm (from the second mark), within-2x "
        "shares, deterministic replay.",
        "",
    ]
    md += render(results, shapes, f"{a.split} traces ({len(results)})")
    md += summary(results, shapes)
    if gpu_results:
        md += render(gpu_results, {}, "real GPU snapshots (shared/traces-gpu, no iteration marks)")
    md += [END]
    text = "\n".join(md)
    print(text)
    if a.doc:
        doc = Path(a.doc)
        old = doc.read_text()
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
