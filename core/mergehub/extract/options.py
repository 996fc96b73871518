"""What ``extract-lora`` is asked to do: one settings object, checked before any model is opened."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mergehub.common.errors import MergehubError

#: mergekit-extract-lora's default --max-rank.
DEFAULT_RANK = 128


@dataclass(frozen=True)
class ExtractOptions:
    """How to turn ``model − base`` into LoRA factors (mergekit-extract-lora's options and defaults)."""

    rank: int = DEFAULT_RANK  # the largest rank of any module (--rank, mergekit's --max-rank)
    energy: float | None = None  # --rank-by energy:F: per module the smallest rank keeping F of Σσ²
    include: tuple[str, ...] = ()  # module-name regexes (re.search): only these (embeddings aside, as mergekit)
    exclude: tuple[str, ...] = ()
    embed_lora: bool = False  # LoRA factors on embeddings instead of saving them whole
    save_modules: tuple[str, ...] = ()  # modules (full name or last component) saved whole
    sv_epsilon: float = 0.0  # singular values at or below this are dropped
    distribute_scale: bool = True  # A = √S Vᴴ, B = U √S; else A = S Vᴴ, B = U
    skip_undecomposable: bool = False  # leave out changed modules that are not 2-D weights instead of saving them
    device: str = "cpu"
    max_memory: int = 256 * 1024**2  # row blocks for reading, copying and measuring the error
    patterns: dict[str, list[re.Pattern[str]]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise MergehubError(f"--rank must be at least 1, not {self.rank}", hint="e.g. --rank 64")
        if self.sv_epsilon < 0:
            raise MergehubError(f"--sv-epsilon must not be negative, not {self.sv_epsilon}", hint="e.g. --sv-epsilon 1e-6")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise MergehubError(f"--rank-by energy:{self.energy}: the energy share must be in (0, 1]",
                                hint="e.g. --rank-by energy:0.9 keeps 90% of each delta's squared singular values")
        for option, regexes in (("--include", self.include), ("--exclude", self.exclude)):
            compiled = []
            for text in regexes:
                try:
                    compiled.append(re.compile(text))
                except re.error as exc:
                    raise MergehubError(f"{option} {text!r} is not a valid regular expression: {exc}",
                                        hint="module names are matched with Python's re.search, "
                                             r"e.g. --exclude 'layers\.0\.'") from None
            self.patterns[option] = compiled

    @property
    def fixed_ranks(self) -> bool:
        """Whether every module's rank is known from its shape alone (no singular value decides it)."""
        return self.energy is None and self.sv_epsilon == 0

    def selected(self, module: str) -> bool:
        """mergekit's rule: matches an --include (when any is given) and no --exclude."""
        include = self.patterns["--include"]
        if include and not any(p.search(module) for p in include):
            return False
        return not self.excluded(module)

    def excluded(self, module: str) -> bool:
        return any(p.search(module) for p in self.patterns["--exclude"])

    def saved_whole(self, module: str) -> bool:
        return module in self.save_modules or module.rsplit(".", 1)[-1] in self.save_modules

    def identity(self) -> dict[str, Any]:
        """The settings that change the adapter's bytes (for --resume)."""
        return {"rank": self.rank, "rank_by": f"energy:{self.energy}" if self.energy is not None else None,
                "include": list(self.include), "exclude": list(self.exclude), "embed_lora": self.embed_lora,
                "save_modules": list(self.save_modules), "sv_epsilon": self.sv_epsilon,
                "distribute_scale": self.distribute_scale, "skip_undecomposable": self.skip_undecomposable}


def parse_rank_by(text: str) -> float:
    """``energy:0.9`` -> 0.9; anything else is a usage error (argparse turns ValueError into one)."""
    kind, sep, value = text.partition(":")
    if kind.strip() != "energy" or not sep:
        raise ValueError(f"unknown rank rule {text!r} (expected energy:F, e.g. energy:0.9)")
    try:
        share = float(value)
    except ValueError:
        raise ValueError(f"energy share {value!r} is not a number (e.g. energy:0.9)") from None
    if not 0 < share <= 1:
        raise ValueError(f"energy share {share} must be in (0, 1] (e.g. energy:0.9)")
    return share
