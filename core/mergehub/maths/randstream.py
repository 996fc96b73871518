"""Random keep masks that do not depend on blocks or threads: one addressable stream per model.

Element ``j`` of a flattened tensor always gets the ``j``-th 16-bit lane of its model's stream, a
PCG64 generator seeded from (the tensor's generator seed, the model's position). PCG64 can jump
ahead, so any range of elements is drawn in time proportional to its length, wherever a block
starts; a 64-bit word gives four lanes, which makes a draw far cheaper than ``torch.bernoulli``
(one serial Mersenne-Twister word per element). An entry is kept when its lane, read as an
unsigned 16-bit ``u``, satisfies ``u/65536 < p``, the 16-bit analogue of torch's Bernoulli test.

A :class:`LaneStream` may be read from several threads at once: each thread draws from its own
copy of the generator (they all start in the same state), so what a range gets does not depend on
which thread draws it.

Tensors of at most :data:`SMALL_TENSOR` elements (norms, biases, tiny test models) are instead drawn
whole, exactly as ``torch.bernoulli(p, generator)`` would, model after model from the tensor's
generator: a mask that small costs nothing to hold.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

#: Tensors up to this many elements are drawn whole from the torch generator, as torch.bernoulli draws them.
SMALL_TENSOR = 1 << 16
LANES_PER_WORD = 4
_OFFSET = 1 << 15  # lanes are read as int16: unsigned u is kept when signed u - 32768 < threshold


class LaneStream:
    """The uniform 16-bit lanes of one model's stream, for any range of flat indices (thread-safe)."""

    def __init__(self, seed: int, slot: int):
        self._seed = np.random.SeedSequence([seed, slot])
        self._start = np.random.PCG64(self._seed).state
        self._local = threading.local()  # one generator per thread: PCG64 is stateful, the lanes are not

    def _generator(self) -> np.random.PCG64:
        """This thread's generator, created at first use (from the same seed, so in the same state)."""
        bits = getattr(self._local, "bits", None)
        if bits is None:
            bits = self._local.bits = np.random.PCG64(self._seed)
        return bits

    def lanes_array(self, start: int, count: int) -> np.ndarray:
        """Lanes ``start .. start+count`` as an int16 array (lane value minus 32768)."""
        bits = self._generator()
        bits.state = self._start
        bits.advance(start // LANES_PER_WORD)
        skip = start % LANES_PER_WORD
        words = bits.random_raw((skip + count + LANES_PER_WORD - 1) // LANES_PER_WORD)
        lanes = words.astype("<u8", copy=False).view("<i2").astype(np.int16, copy=False)  # little-endian pieces
        return lanes[skip : skip + count]

    def lanes(self, start: int, count: int) -> torch.Tensor:
        """:meth:`lanes_array` as a tensor."""
        return torch.from_numpy(self.lanes_array(start, count))


def threshold(probability: float) -> int:
    """The int16 bound a lane must be below to keep an entry with ``probability``.

    ``ceil(p·65536)`` of the 65536 lane values are kept; probabilities within 2⁻¹⁶ of 1 keep
    all but one value, as int16 cannot hold the bound 32768.
    """
    return max(-_OFFSET, min(_OFFSET - 1, math.ceil(probability * 65536) - _OFFSET))


def keep_lanes(lanes: np.ndarray, bound: int | np.ndarray) -> np.ndarray:
    """The keep mask (bool) of ``lanes`` against int16 ``bound`` (one for all, or one per lane)."""
    return np.less(lanes, bound)


def thresholds(probability: torch.Tensor) -> torch.Tensor:
    """:func:`threshold` of each entry of ``probability``, as int16."""
    bound = torch.ceil(probability.double() * 65536) - _OFFSET
    return bound.clamp(-_OFFSET, _OFFSET - 1).to(torch.int16)


def generator_seed(generator: torch.Generator | None) -> int:
    """The seed the lane streams of a tensor derive from (its generator's initial seed)."""
    return (generator or torch.default_generator).initial_seed()


def clone_generator(generator: torch.Generator | None) -> torch.Generator:
    """A fresh generator in ``generator``'s current state, so every pass draws the same numbers."""
    source = generator or torch.default_generator
    clone = torch.Generator(device=source.device)
    clone.set_state(source.get_state())
    return clone

