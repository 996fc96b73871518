"""Boolean masks kept between passes at one bit per element.

A multi-pass block merger often computes a block's mask in one pass and needs it again in the
next (DARE/DELLA's drawn keep masks, SCE's variance selection). Recomputing costs a dozen
kernels per block; keeping it packed costs an eighth of a byte per element, so masks of a whole
tensor fit in a few MB where the tensor itself would not.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import torch


class PackedMasks:
    """Masks of a tensor's blocks, packed, for tensors whose masks fit in ``budget`` bytes.

    ``enabled`` is False when they would not; ``put`` is then a no-op and ``take`` returns None,
    so callers recompute. Each mask is handed back once (``take`` forgets it).
    """

    def __init__(self, elements: int, budget: int):
        self.enabled = (elements + 7) // 8 <= budget
        self.masks: dict[Hashable, np.ndarray] = {}

    def put(self, key: Hashable, mask: torch.Tensor) -> None:
        """Keep ``mask`` (bool, uint8 0/1, or any dtype where non-zero means set) under ``key``."""
        if self.enabled and mask.device.type == "cpu":
            bits = mask if mask.dtype in (torch.uint8, torch.bool) else torch.ne(mask, 0)
            self.masks[key] = np.packbits(bits.contiguous().numpy().reshape(-1).view(np.bool_))

    def take(self, key: Hashable, like: torch.Tensor) -> torch.Tensor | None:
        """The mask kept under ``key`` as a 0/1 uint8 tensor shaped and placed like ``like``, or None."""
        packed = self.masks.pop(key, None)
        if packed is None:
            return None
        return torch.from_numpy(np.unpackbits(packed, count=like.numel())).view(like.shape).to(like.device)
