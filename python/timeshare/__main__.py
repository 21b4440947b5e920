"""``python -m timeshare COMMAND``: replay, capture, options, demo."""

from __future__ import annotations

import sys

USAGE = """usage: python -m timeshare COMMAND [ARGS]

commands:
  replay [PATH...]      replay memory snapshots through every policy (no PATH: shipped traces)
  capture --out T.pkl.gz -- script.py [ARGS]
                        record the allocation trace of a training script
  options               print the TIMESHARE_CONF options table
  demo                  allocate through a simulated device and print the memory summary
"""


def _options() -> int:
    from timeshare import options_table

    for key, typ, default, meaning in options_table():
        print(f"{key:<30} {typ:<7} {default:<16} {meaning}")
    return 0


def _demo() -> int:
    from timeshare import _C
    from timeshare.stats import format_summary

    a = _C.SimAllocator("backend:sim,sim_capacity:4GiB")
    live = []
    for step in range(3):
        acts = [a.malloc(1 << 20 + (i % 4)) for i in range(32)]
        for _ in range(8):
            a.free(a.malloc(3 << 20))
        for p in reversed(acts):
            a.free(p)
        live.append(a.malloc(8 << 20))
        print(f"step {step}: reserved {a.stats()['reserved_bytes.all.current'] >> 20} MiB")
    print(format_summary(a.stats(), f"demo on the sim backend ({a.pool}, predictor {a.predictor})"))
    for p in live:
        a.free(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "replay":
            from timeshare.replay import main as replay_main

            return replay_main(rest)
        if cmd == "capture":
            from timeshare.capture import main as capture_main

            return capture_main(rest)
        if cmd == "options":
            return _options()
        if cmd == "demo":
            return _demo()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"timeshare {cmd}: error: {e}", file=sys.stderr)
        return 1
    print(f"timeshare: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
