"""The gemma-edge command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gemma_edge.models.errors import GemmaEdgeError


def _model_config(source: str, allow_unknown: bool):
    from gemma_edge import models

    if Path(source).exists():
        return models.read_config(source, allow_unknown_keys=allow_unknown)
    return models.get_preset(source)


def cmd_inspect(args) -> int:
    from gemma_edge.models.inspect import summary_rows

    cfg = _model_config(args.model, args.allow_unknown_keys)
    rows = summary_rows(cfg)
    w = max(len(k) for k, _ in rows)
    print(f"{args.model}  ({cfg.family})")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    return 0


def cmd_presets(args) -> int:
    from gemma_edge.models import PRESETS, param_counts

    for name, cfg in PRESETS.items():
        print(f"{name:<22} {cfg.family:<15} {param_counts(cfg)['total']:>16,} params")
    return 0


def main(argv: list[str] | None = None) -> int:
    from gemma_edge.models import DEFAULT_PRESET

    p = argparse.ArgumentParser(prog="gemma-edge", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="config, parameter counts and state memory of a preset or checkpoint")
    i.add_argument("model", nargs="?", default=DEFAULT_PRESET, help="preset name or checkpoint directory")
    i.add_argument("--allow-unknown-keys", action="store_true", help="warn on unknown config.json keys")
    i.set_defaults(fn=cmd_inspect)
    sub.add_parser("presets", help="list the built-in presets").set_defaults(fn=cmd_presets)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except GemmaEdgeError as e:
        if args.debug:
            raise
        print(f"gemma-edge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
