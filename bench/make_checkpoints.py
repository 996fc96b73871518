#!/usr/bin/env python3
"""Write synthetic Llama-3.2-1B-shaped bf16 checkpoints for benchmarking merges.

Three models are made: ``base`` (random weights) and ``a`` / ``b`` (base plus a little
seeded noise, so they look like two fine-tunes of one base). Each is a standard
Hugging Face directory with ``config.json`` and one ``model.safetensors`` (~2.47 GB).

The safetensors file is written by streaming: the header (names, dtypes, shapes,
offsets) is known up front, so it is written first and each tensor's bytes follow,
generated in row chunks. No model, and no large tensor in float32, is ever held in
memory. The three models are generated in lockstep (each base tensor is generated
once and reused for a and b); a model whose ``.complete`` marker exists is skipped.

    python bench/make_checkpoints.py [--out /tmp/mergehub-bench/models] [--models base,a,b]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path("/tmp/mergehub-bench/models")
MARKER = ".complete"

# Llama 3.2 1B
HIDDEN = 2048
INTERMEDIATE = 8192
LAYERS = 16
HEADS = 32
KV_HEADS = 8
HEAD_DIM = 64
VOCAB = 128256

SEEDS = {"base": 0, "a": 1, "b": 2}
WEIGHT_STD = 0.02  # initializer_range
NOISE_STD = 0.001  # the "fine-tune" delta: 5% of the weight scale
NORM_NOISE_STD = 0.01
CHUNK_ELEMENTS = 16 * 1024 * 1024  # generate at most this many values at a time (64 MB of float32)


def config_dict() -> dict:
    """config.json as transformers' LlamaConfig writes it for Llama-3.2-1B (literal fallback if unavailable)."""
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_theta=500000.0, rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                           "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        architectures=["LlamaForCausalLM"], dtype="bfloat16",
    )
    try:
        from transformers import LlamaConfig

        return json.loads(LlamaConfig(**kwargs).to_json_string())
    except Exception:  # noqa: BLE001 - any transformers problem: write the literal equivalent
        return {
            "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 128000, "dtype": "bfloat16", "eos_token_id": 128001, "head_dim": HEAD_DIM,
            "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
            "intermediate_size": INTERMEDIATE, "max_position_embeddings": 131072, "mlp_bias": False,
            "model_type": "llama", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
            "num_key_value_heads": KV_HEADS, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": kwargs["rope_scaling"], "rope_theta": 500000.0, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": VOCAB,
        }


def tensor_specs() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, sorted by name as safetensors' own serializer orders same-dtype tensors."""
    specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("model.norm.weight", (HIDDEN,))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return sorted(specs)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def header_bytes(specs: list[tuple[str, tuple[int, ...]]]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        size = numel(shape) * 2  # bf16
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def chunks(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Split a tensor into row blocks of at most CHUNK_ELEMENTS values."""
    if len(shape) == 1:
        return [shape]
    rows, cols = shape
    per = max(1, CHUNK_ELEMENTS // cols)
    return [(min(per, rows - r), cols) for r in range(0, rows, per)]


def write_models(out: Path, names: list[str]) -> None:
    todo = [n for n in names if not (out / n / MARKER).is_file()]
    for n in names:
        if n not in todo:
            print(f"{out / n}: exists ({MARKER} present), skipped", flush=True)
    if not todo:
        return
    specs = tensor_specs()
    head = header_bytes(specs)
    total = sum(numel(s) for _, s in specs) * 2
    config = config_dict()
    files = {}
    for n in todo:
        directory = out / n
        shutil.rmtree(directory, ignore_errors=True)  # a partial model from an interrupted run
        directory.mkdir(parents=True)
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (directory / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True, "temperature": 0.6, "top_p": 0.9}, indent=2) + "\n")
        f = open(directory / "model.safetensors.partial", "wb")
        f.write(head)
        files[n] = f
    started = time.perf_counter()
    written = 0
    shown = 0.0
    for name, shape in specs:
        is_norm = len(shape) == 1
        gens = {n: generator(SEEDS[n], name) for n in todo if n != "base"}
        base_gen = generator(SEEDS["base"], name)
        for block in chunks(shape):
            if is_norm:  # RMSNorm weights: around 1
                base = 1.0 + 0.05 * torch.randn(block, generator=base_gen)
            else:
                base = torch.randn(block, generator=base_gen).mul_(WEIGHT_STD)
            for n in todo:
                if n == "base":
                    value = base
                else:
                    value = base + torch.randn(block, generator=gens[n]).mul_(NORM_NOISE_STD if is_norm else NOISE_STD)
                data = value.to(torch.bfloat16).view(torch.uint8).numpy()
                files[n].write(memoryview(data))
            written += numel(block) * 2
        now = time.perf_counter()
        if now - shown >= 5 or written == total:
            shown = now
            print(f"  {written / 1e9:5.2f} / {total / 1e9:.2f} GB per model ({now - started:5.1f} s)", file=sys.stderr, flush=True)
    for n, f in files.items():
        f.flush()
        os.fsync(f.fileno())
        f.close()
        directory = out / n
        (directory / "model.safetensors.partial").rename(directory / "model.safetensors")
        (directory / MARKER).write_text(json.dumps({"seed": SEEDS[n], "bytes": len(head) + total}) + "\n")
        print(f"{directory}: written ({(len(head) + total) / 1e9:.2f} GB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the model directories go (default {DEFAULT_OUT})")
    parser.add_argument("--models", default="base,a,b", help="which of base,a,b to make (default all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SEEDS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(SEEDS)}")
    repo = Path(__file__).resolve().parent.parent
    out = args.out.resolve()
    if out == repo or repo in out.parents:
        parser.error(f"{out} is inside the repository; write the checkpoints elsewhere")
    write_models(out, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
