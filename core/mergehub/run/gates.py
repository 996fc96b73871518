"""Router vectors of an assembled MoE, one per expert and layer, as mergekit-moe defines them.

- ``hidden``: the base model (loaded once, in bfloat16, as mergekit loads it) runs each expert's prompts,
  left-padded; per layer, the hidden state entering it at the last position, averaged over the prompts.
- ``cheap_embed``: the token embeddings of the prompts, summed over tokens and prompts and normalised;
  the same vector for every layer.
- For both: the negative prompts' vector is subtracted, then each layer's vector is normalised.
- ``random``: standard normal; ``uniform_random``: uniform in ±1/√hidden (torch.nn.Linear's initialisation).
  Both come from a generator seeded by ``--seed``, so the same seed gives the same gates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from mergehub.common.errors import MergehubError
from mergehub.plan.moe import MoEPlan
from mergehub.recipe.moe import Expert
from mergehub.run.compute import tensor_seed

#: The base model's token embedding, which cheap_embed gates read (mergekit reads this name).
EMBEDDING = "model.embed_tokens.weight"


def gate_vectors(plan: MoEPlan, seed: int | None, device: str = "cpu") -> torch.Tensor:
    """(layers, routed + gated shared experts, hidden) float32 router vectors."""
    recipe = plan.recipe
    experts = list(recipe.experts)
    if recipe.shared and (recipe.gate_mode in ("random", "uniform_random") or recipe.shared[0].positive):
        experts += list(recipe.shared)
    layers, hidden = plan.num_layers, plan.hidden_size
    shape = (layers, len(experts), hidden)
    generator = torch.Generator().manual_seed(tensor_seed(seed, "moe:gates"))
    if recipe.gate_mode == "random":
        return torch.randn(shape, generator=generator)
    if recipe.gate_mode == "uniform_random":
        scale = math.sqrt(1.0 / hidden)
        return torch.rand(shape, generator=generator) * 2 * scale - scale
    encode = _prompt_encoder(plan, device)
    vectors = [_expert_vector(expert, encode) for expert in experts]
    return torch.stack(vectors).permute(1, 0, 2).contiguous()


def _expert_vector(expert: Expert, encode: Callable[[tuple[str, ...]], torch.Tensor]) -> torch.Tensor:
    """(layers, hidden): positive minus negative prompts, normalised per layer."""
    vector = encode(expert.positive)
    if expert.negative:
        vector = vector - encode(expert.negative)
    return vector / vector.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


def _prompt_encoder(plan: MoEPlan, device: str) -> Callable[[tuple[str, ...]], torch.Tensor]:
    tokenizer = _tokenizer(plan.donor.directory)
    layers = plan.num_layers
    if plan.recipe.gate_mode == "cheap_embed":
        embed = plan.donor.reader.read(EMBEDDING).float()

        def cheap(prompts: tuple[str, ...]) -> torch.Tensor:
            batch = _tokenize(tokenizer, prompts)
            tokens = embed[batch["input_ids"]]  # what a one-hot matrix times the embedding gives, exactly
            summed = (tokens * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
            return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(layers, 1)

        return cheap
    model = _hidden_model(plan.donor.directory, device)

    def hidden(prompts: tuple[str, ...]) -> torch.Tensor:
        batch = _tokenize(tokenizer, prompts)
        with torch.no_grad():
            output = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True, return_dict=True)
        states = torch.stack(output.hidden_states[:-1])[:, :, -1, :]  # (layers, prompts, hidden): the last position
        return states.float().mean(dim=1).cpu()  # averaged in float32 (mergekit averages in bfloat16)

    return hidden


def _tokenizer(directory: Path):  # noqa: ANN202  (a transformers tokenizer)
    """The base's tokenizer, left-padded with its BOS token (else EOS), as mergekit-moe prepares it."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError) as exc:
        raise MergehubError(f"cannot load the tokenizer of the base model {directory}, which prompt-based gates need: "
                            f"{str(exc).splitlines()[0]}",
                            hint="give the base its tokenizer files, or use gate_mode: random or uniform_random") from None
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise MergehubError(f"the tokenizer of {directory} has neither a BOS nor an EOS token to pad prompts with",
                            hint="use gate_mode: random or uniform_random, or a base whose tokenizer defines one")
    return tokenizer


def _tokenize(tokenizer, prompts: tuple[str, ...]) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return dict(tokenizer([(tokenizer.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
                          add_special_tokens=False))


def _hidden_model(directory: Path, device: str):  # noqa: ANN202  (a transformers model)
    """The base model, once, in bfloat16 (as mergekit loads it), for its hidden states."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # mergehub reports its own progress
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16, low_cpu_mem_usage=True)
    return model.to(device).eval()
