"""Write an assembled MoE: every output tensor streamed from its pieces, chunk by chunk, into shards.

Expert weights are copied byte for byte (cast only when the recipe's dtype differs), the routers come
from :mod:`mergehub.run.gates`. The local executor writes the blocks, through the same atomic, locked,
resumable directory handling as a merge (:func:`mergehub.run.output.write_model`): a partial
directory, a journal of the tensors written in plan order, fsync and a rename into place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mergehub.common import dtypes
from mergehub.common.version import __version__
from mergehub.plan.fingerprint import model_fingerprint
from mergehub.plan.moe import MoEOutputTensor, MoEPlan, SourceRows
from mergehub.plugin.registry import Registry
from mergehub.run.card import hub_ids
from mergehub.run.compute import tensor_seed
from mergehub.run.output import copy_tokenizer

#: Source tensors are copied in runs of rows of about this many elements (fixed, so that seeded noise
#: is drawn chunk by chunk the same way whatever --max-memory says).
CHUNK_ELEMENTS = 1 << 22
RECIPE_FILE = "mergehub_moe_config.yml"


class MoEAssembler:
    """The blocks of each MoE output tensor, for the local executor to write (in place of a merge's maths)."""

    def __init__(self, plan: MoEPlan, gates: torch.Tensor, seed: int | None):
        self.plan, self.gates, self.seed = plan, gates, seed

    def compute(self, spec: MoEOutputTensor) -> Iterator[torch.Tensor]:
        """The tensor's bytes in order: each piece, in runs of whole rows, in the output dtype."""
        out = dtypes.to_torch(spec.out_dtype)
        for number, piece in enumerate(spec.pieces):
            if piece.model is None:
                yield self.router(piece).to(out).contiguous()
                continue
            reader = self.plan.models[piece.model].reader
            rows = piece.shape[0] if piece.shape else 1
            step = max(1, CHUNK_ELEMENTS // max(1, _row_elements(piece.shape)))
            for chunk, start in enumerate(range(0, rows, step)):
                if piece.shape:
                    tensor = reader.read_rows(piece.piece.tensor, start, min(rows, start + step))  # type: ignore[arg-type]
                else:
                    tensor = reader.read(piece.piece.tensor)  # type: ignore[arg-type]
                yield self.adjust(tensor, piece, f"{spec.name}:{number}:{chunk}").to(out).contiguous()

    def router(self, piece: SourceRows) -> torch.Tensor:
        routed = len(self.plan.recipe.experts)
        layer = self.gates[piece.piece.index]
        return layer[:routed] if piece.piece.source == "router" else layer[routed:]

    def adjust(self, tensor: torch.Tensor, piece: SourceRows, key: str) -> torch.Tensor:
        """An expert's noise (seeded per chunk) and, on its down projection, its residual scale (as mergekit)."""
        if piece.noise_scale is not None:
            generator = torch.Generator().manual_seed(tensor_seed(self.seed, key))
            tensor = tensor + torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * piece.noise_scale
        if piece.piece.residual and piece.residual_scale is not None:
            tensor = tensor * piece.residual_scale
        return tensor


def _row_elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape[1:]:
        count *= size
    return count


def moe_identity(plan: MoEPlan, registry: Registry, seed: int | None, shard_size: int) -> dict[str, Any]:
    """What must be unchanged for ``--resume`` to continue an interrupted assembly."""
    fmt = registry.moe_formats[plan.format.name].plugin
    recipe = json.dumps(plan.recipe.document.data, sort_keys=True, default=str)
    random = plan.recipe.gate_mode in ("random", "uniform_random") or any(
        e.noise_scale for e in plan.recipe.experts + plan.recipe.shared)
    return {"mergehub": __version__, "method": f"moe {fmt.distribution} {fmt.version}",
            "recipe": hashlib.sha256(recipe.encode()).hexdigest(),
            "inputs": {str(m.ref): model_fingerprint(m) for m in plan.models}, "seed": seed if random else None,
            "shard_size": shard_size, "device": "cpu", "trust_remote_code": False, "tensors": len(plan.tensors)}


def moe_files(plan: MoEPlan, title: str) -> Any:
    """What :func:`write_model` writes besides the weights: config.json, the base's tokenizer, the card."""

    def write(directory: Path) -> None:
        (directory / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer(plan, directory)  # type: ignore[arg-type]
        (directory / "README.md").write_text(card_text(plan, title))
        (directory / RECIPE_FILE).write_text(plan.recipe.document.text)

    return write


def card_text(plan: MoEPlan, title: str) -> str:
    recipe = plan.recipe
    refs = recipe.models()
    ids = hub_ids(refs)
    lines = ["---", "library_name: transformers", "tags:", "- moe", "- merge", "- mergehub"]
    if ids:
        lines += ["base_model:"] + [f"- {i}" for i in ids] + ["base_model_relation: moe"]
    lines += ["---", f"# {title or 'mixture of experts'}", "",
              f"A mixture of experts assembled with [mergehub](https://github.com/mergehub/mergehub) {__version__} "
              f"(`mergehub moe`), in the {plan.format.name} format: {len(recipe.experts)} experts, "
              f"{recipe.experts_per_token} per token" + (f", {len(recipe.shared)} shared" if recipe.shared else "")
              + f", gates from `{recipe.gate_mode}`.", "", f"Base model: `{recipe.base}`", "", "## Experts", ""]
    lines += [f"- `{e.model}`" for e in recipe.experts] + [f"- `{e.model}` (shared)" for e in recipe.shared]
    lines += ["", "## Recipe", "", f"Also saved as `{RECIPE_FILE}`:", "", "```yaml", recipe.document.text.strip(),
              "```", ""]
    return "\n".join(lines)
