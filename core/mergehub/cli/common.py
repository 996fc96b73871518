"""Steps shared by the verbs: build the registry, the recipe and model arguments, sizes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mergehub.cli.render import warn
from mergehub.plugin.registry import Registry, build_registry


def registry() -> Registry:
    reg = build_registry()
    reg.check()
    for record in reg.failures():
        warn(f"plugin {record.distribution} {record.version} failed to load and is skipped: {record.error}")
    return reg


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="the YAML recipe (mergekit format)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options about the input models, shared by merge, mega, plan and validate (the verbs that plan)."""
    parser.add_argument("--allow-crimes", action="store_true", help="allow merging models of different architectures")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let transformers import a tokenizer class shipped as Python code with a model "
                             "(an auto_map in its tokenizer_config.json); without it such a tokenizer base is an "
                             "error and other such tokenizers count as unloadable (warning). Model and config code "
                             "is never run")


UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "B": 1000**3, "T": 1000**4,
         "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """``5GB``/``500MB``/``200K``/``1GiB``/bytes; ``5B`` is 5 billion bytes as in mergekit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"invalid size '{text}' (examples: 5GB, 500MB, 2GiB, 1000000)")
    size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return size
