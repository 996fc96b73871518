"""``mergehub merge CONFIG``: run a recipe and write a Hugging Face model directory."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from mergehub.cli.common import (
    add_config_argument,
    add_model_options,
    plan_recipe,
    read_recipe,
    registry,
)
from mergehub.cli.render import err, progress_bar
from mergehub.common.errors import MergehubError
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY
from mergehub.recipe.yamlsource import read_recipe_file

HELP = "merge models as a recipe says and write the result"
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
        raise argparse.ArgumentTypeError("the shard size must be positive")
    return size


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
    add_model_options(parser)
    parser.add_argument("--intermediate-dir", type=Path, metavar="DIR",
                        help="multi-stage recipes: where named stages are written (default: <out>.stages)")
    parser.add_argument("--no-reuse", action="store_true", help="multi-stage recipes: recompute unchanged stages too")


def run(args: argparse.Namespace) -> int:
    from mergehub.run.journal import run_identity
    from mergehub.run.output import (  # imports torch: only when merging
        check_output,
        check_supported,
        write_model,
    )

    started = time.perf_counter()
    reg = registry()
    documents = read_recipe_file(args.config)
    if len(documents) > 1:  # a multi-stage recipe: run it as `mergehub mega` would
        from mergehub.cli import mega

        return mega.run(args, documents)
    recipe = read_recipe(str(args.config), reg, documents)
    out: Path = args.out or Path("merged") / args.config.stem
    check_output(out, args.force)
    check_device(args.device)
    plan = plan_recipe(recipe, reg, args.allow_crimes, args.trust_remote_code)
    check_supported(plan)
    backend = reg.io_backend("safetensors").load()
    total = plan.bytes_to_write()
    try:
        with progress_bar(total, len(plan.tensors)) as advance:
            write_model(plan, out, backend, force=args.force, shard_size=args.shard_size, seed=args.seed,
                        device=args.device, progress=advance, max_memory=args.max_memory,  # type: ignore[arg-type]
                        identity=run_identity(plan, reg, seed=args.seed, shard_size=args.shard_size, device=args.device),
                        resume=args.resume, allow_nonfinite=args.allow_nonfinite)
    finally:
        plan.close()
    seconds = time.perf_counter() - started
    err.print(f"[green]merged[/green] {len(plan.tensors)} tensors ({total / 1e6:.1f} MB, {plan.num_layers} layers) "
              f"with {recipe.method.name} into {out} in {seconds:.1f} s")
    return 0


def check_device(device: str) -> None:
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as exc:  # a CPU-only torch asserts for cuda
        raise MergehubError(f"cannot use device '{device}': {exc}", hint="use --device cpu, or a device this machine has") from exc
