"""Entry point: ``mergehub <verb> …``. Verbs live in their own modules."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import ModuleType

from mergehub.cli import (
    extract_lora,
    inspect,
    mega,
    merge,
    moe,
    new,
    plan,
    plugins,
    schema,
    validate,
)
from mergehub.cli.render import error_panel
from mergehub.cli.running import expand_executor_flags
from mergehub.common.errors import MergehubError
from mergehub.common.version import __version__

VERBS: dict[str, ModuleType] = {
    "merge": merge, "mega": mega, "plan": plan, "validate": validate, "schema": schema, "plugins": plugins,
    "inspect": inspect, "new": new, "moe": moe, "extract-lora": extract_lora,
}


#: What the exit status means; printed by every ``--help`` and documented in the README.
EXIT_STATUS = """exit status:
  0    success
  1    a problem with the recipe, the models or the plugins (the message says what, where and how to fix it)
  2    a usage error: unknown command or option, missing argument
  130  interrupted (Ctrl-C or SIGTERM); merge --resume continues from the finished tensors
  141  the reader of the output went away (e.g. piped into head); nothing else is affected"""


def build_parser() -> argparse.ArgumentParser:
    debug_help = "show Python tracebacks for errors"
    # After the verb, --debug must not reset a --debug given before it: SUPPRESS keeps it unset unless given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    layout = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="mergehub", description="Merge the weights of large language models from "
                                     "YAML recipes.", epilog=EXIT_STATUS, formatter_class=layout)
    parser.add_argument("--debug", action="store_true", help=debug_help)
    parser.add_argument("--version", action="version", version=f"mergehub {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name, module in VERBS.items():
        verb = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common], epilog=EXIT_STATUS,
                              formatter_class=layout)
        module.configure(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: idle worker threads sleep instead of spinning, which on a busy
    # machine (or beside the writer thread) otherwise burns cores the maths needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = expand_executor_flags(sys.argv[1:] if argv is None else argv)
    _stop_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return status
    except BrokenPipeError:  # also when the closed pipe is stderr, while reporting an error
        return _reader_went_away()


def _run(args: argparse.Namespace) -> int:
    """Run the verb; a user's mistake becomes a message and status 1, never a traceback."""
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


def _reader_went_away() -> int:
    """``mergehub schema | head -1``: the reader closed the pipe, which is not an error worth a traceback.

    Output still buffered for the closed pipe is sent to /dev/null so that Python's own flush at exit
    does not fail again; the status is the shell's for a process ended by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    return 141


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's stop) ends a run as Ctrl-C does: cleanly, work kept for --resume."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
