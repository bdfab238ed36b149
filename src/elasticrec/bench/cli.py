"""``elasticrec bench efficiency | accuracy`` (hooked into the main command line by ``elasticrec.cli``)."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from elasticrec.bench import accuracy, efficiency


def add_subcommands(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: time/memory vs sequence length, multi-seed accuracy")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    e = bsub.add_parser("efficiency", help="training / inference time and peak memory of each model vs L",
                        description=efficiency.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    efficiency.add_arguments(e)
    e.set_defaults(func=efficiency.run)
    a = bsub.add_parser("accuracy", help="train every (dataset, model, seed) from the presets; mean ± std table",
                        description=accuracy.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    accuracy.add_arguments(a)
    a.set_defaults(func=accuracy.run)


def standalone(name: str, module: ModuleType, argv: list[str] | None = None) -> int:
    """Run a benchmark module (``add_arguments`` + ``run``) as its own command, as
    ``python -m elasticrec.bench.<name>`` and ``benchmarks/<name>.py`` do."""
    from elasticrec.config import ConfigError

    prog = f"elasticrec bench {name}"
    p = argparse.ArgumentParser(prog=prog, description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    args = p.parse_args(argv)
    try:
        return module.run(args)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
