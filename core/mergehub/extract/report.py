"""What an extraction tells people: one row per module (for the table and ``--json``), and the model card."""

from __future__ import annotations

from typing import Any

from mergehub.common.version import __version__
from mergehub.extract.adapter import CONFIG
from mergehub.extract.options import ExtractOptions
from mergehub.extract.plan import FACTORISED, ExtractPlan
from mergehub.run.card import hub_ids

HOW = {"lora": "LoRA", "embedding": "LoRA (embedding)", "whole": "saved whole", "unchanged": "unchanged",
       "skipped": "skipped", "tied": "tied", "dropped": "left out"}


def module_rows(plan: ExtractPlan) -> list[dict[str, Any]]:
    """Per module: what became of it, its rank and the relative error ‖ΔW − B A‖_F / ‖ΔW‖_F of the adapter
    (0 for a module saved whole or unchanged; None where the adapter does not hold the change)."""
    rows = []
    for module in plan.modules:
        stats = module.stats or {}
        factorised = module.how in FACTORISED or module.how == "dropped"
        error = stats.get("error") if factorised else 0.0 if module.how in ("whole", "unchanged") else None
        rows.append({"module": module.name, "how": module.how, "reason": module.reason,
                     "shape": list(module.shape) if module.shape else None,
                     "rank": module.rank if factorised else None, "error": error,
                     "norm": stats.get("norm") if factorised else None})
    return rows


def summary(plan: ExtractPlan, options: ExtractOptions, out: str, seconds: float) -> dict[str, Any]:
    """The ``--json`` report."""
    ranks = plan.ranks()
    return {"out": out, "model": str(plan.refs[0]), "base": str(plan.refs[1]), "r": max(ranks.values()),
            "rank_limit": options.rank, "rank_by": f"energy:{options.energy}" if options.energy is not None else None,
            "sv_epsilon": options.sv_epsilon, "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
            "modules_to_save": plan.modules_to_save(), "tensors": len(plan.tensors),
            "bytes": plan.bytes_to_write(), "seconds": round(seconds, 3), "warnings": plan.warnings,
            "modules": module_rows(plan)}


def error_text(error: float | None) -> str:
    return "" if error is None else f"{error:.2e}" if 0 < error < 1e-3 else f"{error:.4f}"


def card_text(plan: ExtractPlan, options: ExtractOptions, title: str, command: str) -> str:
    finetune, base = plan.refs
    ids = hub_ids([base])
    lines = ["---", "library_name: peft", "tags:", "- peft", "- lora", "- mergehub", "- extract-lora"]
    if ids:
        lines += ["base_model:"] + [f"- {i}" for i in ids] + ["base_model_relation: adapter"]
    ranks = plan.ranks()
    rule = (f"per module the smallest rank keeping {options.energy:g} of the delta's squared singular values, "
            f"at most {options.rank}" if options.energy is not None else f"at most {options.rank} per module")
    if options.sv_epsilon:
        rule += f", singular values above {options.sv_epsilon:g} only"
    errors = [r["error"] for r in module_rows(plan) if r["how"] in FACTORISED and r["error"] is not None]
    intro = (f"A LoRA adapter extracted with [mergehub](https://github.com/mergehub/mergehub) {__version__} "
             f"(`mergehub extract-lora`): the difference between the fine-tune `{finetune}` and its base `{base}`, "
             "factorised module by module by truncated SVD. Applied to the base (PEFT's `PeftModel.from_pretrained`, "
             "or `merge_and_unload()`), it gives the fine-tune up to the error below.")
    rank = (f"- Rank: r = {max(ranks.values())} ({rule}; modules of another rank are in `rank_pattern` of "
            f"`{CONFIG}`)")
    count = f"- Factorised modules: {len(ranks)}"
    if errors:
        count += f"; largest relative error {max(errors):.4g}, mean {sum(errors) / len(errors):.4g}"
    lines += ["---", f"# {title or 'extracted LoRA'}", "", intro, "", f"- Base model: `{base}`",
              f"- Fine-tune: `{finetune}`", rank, count]
    saved = plan.modules_to_save()
    if saved:
        lines.append(f"- Saved whole (`modules_to_save`): {', '.join(f'`{k}`' for k in saved)}")
    if plan.vocab is not None:
        ft_rows, base_rows = plan.vocab
        warning = (f"> [!WARNING]\n> The fine-tune has {ft_rows} embedding rows, the base {base_rows}: resize the "
                   f"base's embeddings first (`model.resize_token_embeddings({ft_rows})`) and use the fine-tune's "
                   "tokenizer.")
        lines += ["", warning]
    lines += ["", "## Modules", "",
              "Relative error is ‖ΔW − B A‖_F / ‖ΔW‖_F of the factors as stored (0: the delta is recovered "
              "exactly).", "",
              "| module | in the adapter | rank | relative error |", "|---|---|---:|---:|"]
    for row in module_rows(plan):
        how = HOW[row["how"]] + (f" ({row['reason']})" if row["reason"] else "")
        rank = "" if row["rank"] is None else str(row["rank"])
        lines.append(f"| `{row['module']}` | {how} | {rank} | {error_text(row['error'])} |")
    lines += ["", "## Command", "", "```sh", command, "```", ""]
    return "\n".join(lines)
