"""What ``merge`` and ``mega`` share: their options, turned into one RunOptions, and the run itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergehub.cli.common import (
    add_config_argument,
    add_model_options,
    parse_size,
    registry,
)
from mergehub.cli.render import err, progress_bar, warn
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY
from mergehub.recipe.yamlsource import read_recipe_file
from mergehub.run.options import RunOptions


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, help="output directory (default: ./merged/<config name>)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (only once the new one is complete)")
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"), metavar="SIZE",
                        help="largest shard in bytes, e.g. 2GB, 500MB (default 5GB)")
    parser.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                        help="most memory the maths may hold at once, e.g. 512MB, 2GB (default 256MiB); "
                             "larger tensors are merged in row blocks")
    parser.add_argument("--seed", type=int, default=None, help="seed for randomised methods (same seed, same bytes)")
    parser.add_argument("--device", default="cpu", help="torch device for the maths, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of the same recipe from the tensors it already wrote")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="write NaN/Inf values a merge produces instead of stopping with an error")
    parser.add_argument("--executor", default="local", metavar="NAME",
                        help="what runs the merge: local (default, this machine) or an installed executor plugin "
                             "(mergehub plugins lists them)")
    parser.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="a setting of the chosen executor (repeatable); values are read as YAML scalars; "
                             "--NAME-KEY VALUE is short for it (e.g. --executor ray --ray-address auto)")
    add_model_options(parser)
    parser.add_argument("--intermediate-dir", type=Path, metavar="DIR",
                        help="multi-stage recipes: where named stages are written (default: <out>.stages)")
    parser.add_argument("--no-reuse", action="store_true", help="multi-stage recipes: recompute unchanged stages too")


def expand_executor_flags(argv: list[str]) -> list[str]:
    """``--NAME-KEY VALUE`` (or ``--NAME-KEY=VALUE``) for the executor chosen with ``--executor NAME``
    becomes ``--executor-option KEY=VALUE``, so an executor's settings read like flags of its own."""
    name = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--executor"), None)
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--executor=")), name)
    if not name or name == "local":
        return argv
    prefix, result, i = f"--{name}-", [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return result + argv[i:]
        if arg.startswith(prefix) and len(arg) > len(prefix):
            key, sep, value = arg[len(prefix):].partition("=")
            if not sep and i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            result += ["--executor-option", f"{key.replace('-', '_')}={value}"]
        else:
            result.append(arg)
        i += 1
    return result


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key.strip(), yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return key.strip(), value


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        out=args.out or Path("merged") / args.config.stem, intermediate=args.intermediate_dir, force=args.force,
        reuse=not args.no_reuse, resume=args.resume, shard_size=args.shard_size, max_memory=args.max_memory,
        seed=args.seed, device=args.device, allow_crimes=args.allow_crimes, trust_remote_code=args.trust_remote_code,
        allow_nonfinite=args.allow_nonfinite, executor=args.executor, executor_options=dict(args.executor_option))


def execute(args: argparse.Namespace) -> int:
    """Run the recipe ``args.config`` (one document or several) as the options say."""
    from mergehub.run.runner import (  # imports torch: only when merging
        Reporter,
        run_recipe,
    )

    reg = registry()
    documents = read_recipe_file(args.config)
    reporter = Reporter(say=lambda lead, text: err.print(f"[green]{lead}[/green] {text}" if lead else text), warn=warn,
                        progress=lambda plan: progress_bar(plan.bytes_to_write(), len(plan.tensors)))
    run_recipe(documents, reg, run_options(args), reporter)
    return 0
