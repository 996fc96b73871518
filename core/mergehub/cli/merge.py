"""``mergehub merge CONFIG``: run a recipe and write a Hugging Face model directory."""

from __future__ import annotations

import argparse

from mergehub.cli import running

HELP = "merge models as a recipe says and write the result"


def configure(parser: argparse.ArgumentParser) -> None:
    running.configure(parser)


def run(args: argparse.Namespace) -> int:
    return running.execute(args)
