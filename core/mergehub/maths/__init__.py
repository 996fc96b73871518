"""Tensor maths a method plugin may call: row-block kernels and the shared pieces of the methods.

Import from this package, not its modules (``from mergehub.maths import merge_whole, ties_blocks``);
the modules behind these names are internal. Names are resolved on first use, so importing the
package does not import torch until a kernel is needed.

- Blocks: :func:`merge_whole` runs a block merger over a whole tensor; :data:`DEFAULT_MAX_MEMORY`.
- Task arithmetic and consensus: :func:`split_base`, :func:`merge_task_vectors`, :func:`sign_agreement`,
  :func:`elect`, :func:`stacked_sum`, :func:`ties_blocks`.
- Random sparsification (DARE, DELLA): :func:`dare_linear_blocks`, :func:`dare_ties_blocks`,
  :func:`della_blocks`, :func:`della_linear_blocks`, :func:`magnitude_order`, :func:`check_della_params`.
- Outliers (breadcrumbs): :func:`breadcrumbs_blocks`, :func:`breadcrumbs_ties_blocks`.
- Spherical: :func:`slerp_blocks`, :func:`nuslerp_blocks`, :func:`multislerp_blocks`, :func:`karcher_blocks`,
  :func:`non_base`.
- Linear combinations from Gram matrices: :class:`GramBlocks` (Y = [B +] Σ cₖ·vₖ, c from a solver),
  :func:`norms`, :func:`length`, :class:`Select`; the solvers :func:`slerp_solve`, :func:`nuslerp_solve`,
  :func:`multislerp_solve`.
- Statistics: :class:`TopK`, :func:`as_factor`, :data:`SHORT`, :class:`RowSums`, :class:`PackedMasks`,
  :class:`BlockQuantiles`,
  :func:`index_quantiles`, :func:`softmax_kl`, :func:`weighted_sum`, :func:`working_dtype`,
  :data:`SMALL_TENSOR`.
- Threads: :func:`each` runs a kernel over pieces on the worker threads (torch single-threaded on each),
  :func:`spans` cuts a block's elements into one piece per worker.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the internal module that defines it
_HOMES = {
    "DEFAULT_MAX_MEMORY": "blocks", "BlockMerge": "blocks", "merge_whole": "blocks",
    "split_base": "taskarith", "merge_task_vectors": "taskarith", "sign_agreement": "taskarith",
    "elect": "taskarith", "stacked_sum": "taskarith", "ties_blocks": "taskarith",
    "dare_linear_blocks": "dropout", "dare_ties_blocks": "dropout", "della_blocks": "dropout",
    "della_linear_blocks": "dropout", "magnitude_order": "dropout", "DareBlocks": "dropout",
    "DellaBlocks": "dropout", "check_della_params": "sparsify",
    "breadcrumbs_blocks": "outliers", "breadcrumbs_ties_blocks": "outliers", "OutlierBlocks": "outliers",
    "slerp_blocks": "spherical", "nuslerp_blocks": "spherical", "multislerp_blocks": "spherical",
    "karcher_blocks": "spherical", "non_base": "spherical", "nuslerp_solve": "spherical",
    "multislerp_solve": "spherical", "slerp_solve": "spherical",
    "GramBlocks": "gram", "Select": "gram", "norms": "gram", "length": "gram",
    "TopK": "topk", "as_factor": "topk", "SHORT": "topk", "RowSums": "rowsums", "PackedMasks": "packedmasks",
    "BlockQuantiles": "quantiles", "index_quantiles": "tensormath", "softmax_kl": "tensormath",
    "weighted_sum": "tensormath", "working_dtype": "tensormath", "SMALL_TENSOR": "randstream",
    "each": "workers", "spans": "workers",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mergehub.maths' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return __all__
