"""The JSON Schema of a recipe, assembled from the installed plugins.

Recipe keys follow mergekit's format. The ``parameters`` objects are closed: with a
method known they accept exactly that method's parameters (so ``wieght`` is an
error with a suggestion instead of being silently ignored).
"""

from __future__ import annotations

from typing import Any

from mergehub.plugin.specs import MethodSpec

DTYPES = ["bfloat16", "float16", "float32", "float64", "int64"]
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "fp64": "float64", "double": "float64"}
#: Keys mergekit parses but never uses: accepted, with a warning.
IGNORED_KEYS = {"residual_weight"}

SCALAR = {"type": ["number", "boolean", "string"]}


def value_schema(scalar: dict[str, Any]) -> dict[str, Any]:
    """A parameter value: a scalar, a gradient list, or filtered values."""
    plain = {"anyOf": [scalar, {"type": "array", "minItems": 1, "items": scalar}]}
    conditional = {
        "type": "object",
        "additionalProperties": False,
        "required": ["value"],
        "properties": {
            "filter": {"type": ["string", "null"], "description": "substring of the tensor name; null or '*' matches all"},
            "value": plain,
        },
    }
    return {"anyOf": [scalar, {"type": "array", "minItems": 1, "items": scalar}, conditional, {"type": "array", "items": conditional}]}


def _param_scalar(prop: dict[str, Any]) -> dict[str, Any]:
    keep = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum"}
    return {k: v for k, v in prop.items() if k in keep}


def parameters_schema(method: MethodSpec | None) -> dict[str, Any]:
    if method is None:
        return {"type": "object", "additionalProperties": value_schema(SCALAR)}
    props = {
        name: {"description": prop.get("description", ""), **value_schema(_param_scalar(prop))}
        for name, prop in method.parameters.get("properties", {}).items()
    }
    return {"type": "object", "additionalProperties": False, "properties": props}


MODEL_REF: dict[str, Any] = {
    "description": "a local directory or a Hugging Face id, optionally name@revision and +lora",
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["model"],
            "properties": {
                "model": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "object", "additionalProperties": False, "required": ["path"], "properties": {"path": {"type": "string"}, "revision": {"type": ["string", "null"]}}}]},
                "lora": {"type": ["string", "object", "null"]},
                "override_architecture": {"type": ["string", "null"]},
            },
        },
    ],
}


TOKEN_SOURCE: dict[str, Any] = {
    "description": "the row a model lacking the token (or every model, with force) gets",
    "anyOf": [
        MODEL_REF,
        {"type": "object", "additionalProperties": False, "required": ["kind"],
         "properties": {"kind": {"const": "zero"}}},
        {"type": "object", "additionalProperties": False, "required": ["kind", "model"],
         "properties": {"kind": {"const": "model_token"}, "model": MODEL_REF,
                        "token": {"type": "string", "description": "the donor row's token in that model's vocabulary"},
                        "token_id": {"type": "integer", "minimum": 0, "description": "the donor row's index"}}},
    ],
}

TOKENIZER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "build the output tokenizer and align the vocabulary tensors (cannot be combined with tokenizer_source)",
    "properties": {
        "source": {"description": "union (default), base, or a model whose tokenizer to use",
                   "anyOf": [{"enum": ["base", "union"]}, MODEL_REF]},
        "tokens": {
            "type": "object",
            "description": "per-token settings, keyed by the token's text; a token missing from the tokenizer is added",
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {"source": TOKEN_SOURCE,
                               "force": {"type": "boolean", "default": False,
                                         "description": "every model takes the default row, even one that has the token"}},
            },
        },
        "pad_to_multiple_of": {"type": "integer", "minimum": 1,
                               "description": "round the vocabulary up to a multiple of this; padding rows are the mean row"},
    },
}


def recipe_schema(method: MethodSpec | None = None, methods: list[str] | None = None) -> dict[str, Any]:
    """The recipe schema; specialised to ``method``'s parameters when given."""
    params = parameters_schema(method)
    method_prop: dict[str, Any] = {"type": "string", "description": "name of an installed merge method"}
    if methods:
        method_prop["examples"] = sorted(methods)
    dtype = {"type": "string", "description": f"one of {', '.join(DTYPES)} (aliases: {', '.join(DTYPE_ALIASES)})"}
    source = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "layer_range"],
        "properties": {
            "model": MODEL_REF,
            "layer_range": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0}, "description": "[start, end): source layers start .. end-1"},
            "parameters": params,
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mergehub recipe" + (f" for method '{method.name}'" if method else ""),
        "type": "object",
        "additionalProperties": False,
        "required": ["merge_method"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "stage name in a multi-document recipe"},
            "merge_method": method_prop,
            "base_model": MODEL_REF,
            "models": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "additionalProperties": False, "required": ["model"], "properties": {"model": MODEL_REF, "parameters": params}},
            },
            "slices": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sources"],
                    "properties": {
                        "sources": {"type": "array", "minItems": 1, "items": source},
                        "base_model": MODEL_REF,
                        "parameters": params,
                        "residual_weight": {"type": "number", "description": "parsed by mergekit but unused; ignored"},
                    },
                },
            },
            "parameters": params,
            "dtype": dtype,
            "out_dtype": dtype,
            "tokenizer_source": {"description": "build the output tokenizer and align the vocabulary tensors: "
                                 "base, union, or a model whose tokenizer to use",
                                 "anyOf": [{"enum": ["base", "union"]}, MODEL_REF]},
            "tokenizer": TOKENIZER,
            "chat_template": {"type": "string", "minLength": 1,
                              "description": "auto (the models' most common template), a built-in name "
                                             "(alpaca, chatml, exaone, llama3, mistral) or a Jinja template"},
        },
    }


