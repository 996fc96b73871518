"""``mergehub mega CONFIG``: run a multi-stage recipe (several YAML documents); the same as ``merge``."""

from __future__ import annotations

import argparse

from mergehub.cli import running

HELP = "run a multi-stage recipe: documents separated by ---, later ones using earlier ones by name"


def configure(parser: argparse.ArgumentParser) -> None:
    running.configure(parser)  # --intermediate-dir and --no-reuse are the stage options


def run(args: argparse.Namespace) -> int:
    return running.execute(args)
