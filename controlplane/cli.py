"""The ``liveupdate`` command. Subcommands are imported only when run, so ``--help`` stays fast
and the control-plane host never loads torch for commands that do not need it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("controlplane.commands.demo", "run the embedded appliance on http://127.0.0.1:8000"),
    "serve": ("controlplane.commands.serve", "run the control plane's ASGI server (production)"),
    "manage": ("controlplane.commands.manage", "run a Django management command"),
    "node": ("nodeworker.commands.node", "run an inference node (liveupdate node run --name ...)"),
    "cluster": (
        "nodeworker.commands.cluster",
        "the simulated training cluster feeding a delta-sync baseline node",
    ),
    "analyze-gradients": (
        "dlrm_core.commands.analyze",
        "how low-rank is a training window's embedding update (per table, per D)",
    ),
    "experiment": (
        "dlrm_core.commands.experiment",
        "replay a stream through every update strategy; write results.json + report.html",
    ),
    "protocol": (
        "dlrm_core.commands.protocol",
        "the whole evaluation grid (fleet sizes x routings x sync periods x seeds) in parallel",
    ),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (``prog: error: ...``, exit 2), not
    the whole usage block; ``--help`` still prints it. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Options whose value may start with '-' (a node token can): "--token -x" is read as "--token=-x".
DASH_VALUE_OPTIONS = frozenset({"--token"})


def join_dash_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in DASH_VALUE_OPTIONS:
            value = next(args, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="liveupdate",
        description="LiveUpdate: fresh recommendation models without cross-cluster parameter sync.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    name, rest = argv[0], join_dash_values(argv[1:])
    module = importlib.import_module(COMMANDS[name][0])
    prog = f"liveupdate {name}"
    parser = OneLineErrorParser(prog=prog, description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a path the user gave that a command opened without checking it first
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
