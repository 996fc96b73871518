"""``mergehub moe RECIPE``: assemble a mixture-of-experts model from dense fine-tunes of one base."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mergehub.cli.common import add_config_argument, parse_size, registry
from mergehub.cli.render import err, progress_bar
from mergehub.common.errors import MergehubError
from mergehub.recipe.yamlsource import Document, read_recipe_file

HELP = "build a mixture-of-experts model from dense fine-tunes of one base (mergekit-moe recipes)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, help="output directory (default: ./merged/<config name>)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (only once the new one is complete)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from the tensors it wrote")
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"), metavar="SIZE",
                        help="largest shard in bytes, e.g. 2GB, 500MB (default 5GB)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for random gates and expert noise (same seed, same bytes)")
    parser.add_argument("--device", default="cpu", help="torch device that runs the base model for hidden-state gates")
    parser.add_argument("--allow-identical-experts", "--i-understand-this-is-not-useful-without-training",
                        dest="allow_identical", action="store_true",
                        help="allow every expert to be the same model (useful only as a starting point for training)")


def is_moe_recipe(documents: list) -> bool:
    """A one-document recipe with ``experts`` and no ``merge_method`` is an MoE recipe (for validate and plan)."""
    data = documents[0].data if len(documents) == 1 else None
    return isinstance(data, dict) and "experts" in data and "merge_method" not in data


def moe_figures(plan: Any) -> dict[str, Any]:
    """What an assembly reads, writes and holds: the same figures ``plan`` gives merges."""
    from mergehub.common import dtypes
    from mergehub.run.moe import CHUNK_ELEMENTS

    pieces = [p for t in plan.tensors for p in t.pieces if p.model is not None]
    read = sum(dtypes.nbytes(p.dtype, p.shape) for p in pieces)
    model = sum(dtypes.nbytes("bfloat16", p.shape) for t in plan.tensors for p in t.pieces if p.model == 0)
    hidden = model if plan.recipe.gate_mode == "hidden" else 0  # the base model, loaded once for its hidden states
    return {"format": plan.format.name, "experts": len(plan.recipe.experts), "shared": len(plan.recipe.shared),
            "experts_per_token": plan.recipe.experts_per_token, "gate_mode": plan.recipe.gate_mode,
            "layers": plan.num_layers, "tensors": len(plan.tensors), "read_bytes": read,
            "write_bytes": plan.bytes_to_write(), "peak_memory_bytes": hidden + 3 * 4 * CHUNK_ELEMENTS}


def check(document: Document, allow_identical: bool = False) -> dict[str, Any]:
    """Validate and plan an MoE recipe (headers only); its figures."""
    from mergehub.plan.moe import make_moe_plan
    from mergehub.recipe.moe import load_moe_recipe

    plan = make_moe_plan(load_moe_recipe(document, allow_identical), registry())
    plan.close()
    return moe_figures(plan)


def run(args: argparse.Namespace) -> int:
    from mergehub.plan.moe import make_moe_plan
    from mergehub.recipe.moe import load_moe_recipe
    from mergehub.run.gates import gate_vectors
    from mergehub.run.local import LocalExecutor
    from mergehub.run.moe import MoEAssembler, moe_files, moe_identity
    from mergehub.run.options import RunOptions
    from mergehub.run.output import check_output, write_model

    started = time.perf_counter()
    documents = read_recipe_file(args.config)
    if len(documents) != 1:
        raise MergehubError(f"{args.config} holds {len(documents)} YAML documents; an MoE recipe is one",
                            hint="put each MoE recipe in a file of its own")
    out = args.out or Path("merged") / args.config.stem
    check_output(out, args.force)
    reg = registry()
    recipe = load_moe_recipe(documents[0], allow_identical=args.allow_identical)
    plan = make_moe_plan(recipe, reg)
    try:
        err.print(f"[green]format[/green] {plan.format.name}: {len(recipe.experts)} experts, "
                  f"{recipe.experts_per_token} per token, gates from {recipe.gate_mode}")
        gates = gate_vectors(plan, args.seed, args.device)
        options = RunOptions(out=out, force=args.force, resume=args.resume, shard_size=args.shard_size,
                             seed=args.seed, device=args.device)
        backend = reg.io_backend("safetensors").load()
        with progress_bar(plan.bytes_to_write(), len(plan.tensors)) as advance:
            executor = LocalExecutor(options, MoEAssembler(plan, gates, args.seed))
            write_model(plan, out, options, executor, backend,  # type: ignore[arg-type]
                        replace=args.force, identity=moe_identity(plan, reg, args.seed, args.shard_size),
                        progress=advance, files=moe_files(plan, out.name))
    finally:
        plan.close()
    seconds = time.perf_counter() - started
    err.print(f"[green]assembled[/green] {len(plan.tensors)} tensors ({plan.bytes_to_write() / 1e6:.1f} MB) "
              f"into {out} in {seconds:.1f} s")
    return 0
