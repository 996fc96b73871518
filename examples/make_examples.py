"""Regenerate the tiny example checkpoints in examples/models (a few hundred KB, no download).

    python examples/make_examples.py

Each model is a real transformers LlamaForCausalLM (hidden 32, 4 layers, vocab 128)
with random weights and a small word-level tokenizer; the seeds make them identical
on every run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mergehub.testing import build_tiny_model

HERE = Path(__file__).parent / "models"
MODELS = {
    "llama-base": dict(seed=10),
    "llama-a": dict(seed=11),
    "llama-b": dict(seed=12),
}


def main() -> None:
    for name, options in MODELS.items():
        target = HERE / name
        shutil.rmtree(target, ignore_errors=True)
        build_tiny_model(target, arch="llama", layers=4, hidden=32, vocab=128, tokenizer=True, **options)
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
