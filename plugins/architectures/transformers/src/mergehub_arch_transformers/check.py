"""Does an output config.json describe the tensors written? transformers decides: the model of that
config is built on the meta device and its tensors compared by name and shape."""

from __future__ import annotations

import json
from typing import Any

from mergehub_arch_transformers.derive import MetaModel, build_meta

SHOWN = 3


def check_config(config: dict[str, Any], tensors: dict[str, tuple[int, ...]]) -> str | None:
    """A problem text when transformers would build other tensors from ``config``, else None."""
    try:
        metas = build_meta(json.dumps(config, sort_keys=True))
    except Exception as exc:  # transformers refuses the config itself (e.g. layer_types of the wrong length)
        return f"transformers refuses it: {type(exc).__name__}: {exc}"
    problems = [_problem(meta, tensors) for meta in metas]  # the model's own names, or save_pretrained's
    return None if None in problems else problems[0]


def _problem(meta: MetaModel, tensors: dict[str, tuple[int, ...]]) -> str | None:
    expected = {n: s for n, s in meta.shapes.items() if n not in meta.tied or n in tensors}
    missing = [n for n in expected if n not in tensors]
    extra = [n for n in tensors if n not in meta.shapes]
    reshaped = [f"{n} {list(tensors[n])} (config says {list(s)})" for n, s in expected.items()
                if n in tensors and tuple(tensors[n]) != tuple(s)]
    parts = [f"{what}: {', '.join(items[:SHOWN])}{' …' if len(items) > SHOWN else ''}"
             for what, items in (("expected but not written", missing), ("written but not expected", extra),
                                 ("of another shape", reshaped)) if items]
    return "; ".join(parts) or None
