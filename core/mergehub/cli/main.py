"""Entry point: ``mergehub <verb> …``. Verbs live in their own modules."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import ModuleType

from mergehub import __version__
from mergehub.cli import inspect, mega, merge, plan, plugins, schema, validate
from mergehub.cli.render import error_panel
from mergehub.errors import MergehubError

VERBS: dict[str, ModuleType] = {
    "merge": merge, "mega": mega, "plan": plan, "validate": validate, "schema": schema, "plugins": plugins,
    "inspect": inspect,
}


def build_parser() -> argparse.ArgumentParser:
    debug_help = "show Python tracebacks for errors"
    # After the verb, --debug must not reset a --debug given before it: SUPPRESS keeps it unset unless given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    parser = argparse.ArgumentParser(prog="mergehub",
                                     description="Merge the weights of large language models from YAML recipes.")
    parser.add_argument("--debug", action="store_true", help=debug_help)
    parser.add_argument("--version", action="version", version=f"mergehub {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name, module in VERBS.items():
        verb = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.configure(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a busy
    # machine (or beside the writer thread) otherwise burns cores the maths needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else argv
    _stop_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb].run(args)
    except MergehubError as exc:
        if args.debug:
            raise
        error_panel(exc)
        return 1
    except KeyboardInterrupt as exc:
        message = getattr(exc, "message", None) or "interrupted; nothing was written to the output"
        print(f"mergehub: {message}", file=sys.stderr)
        return 130


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's stop) ends a run as Ctrl-C does: cleanly, work kept for --resume."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
