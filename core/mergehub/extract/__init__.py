"""``mergehub extract-lora``: a PEFT LoRA adapter from a fine-tune and its base.

The stages, in order: :mod:`options` (the settings, checked), :mod:`plan` (both models opened through the
usual readers and architecture layouts, headers only: which module is factorised, saved whole or left out, and
every adapter tensor's name, shape and dtype), :mod:`svd` (the truncated SVD of one delta and the rank it keeps),
:mod:`source` (each adapter tensor's bytes, module by module, for the local executor, which writes them through
the same atomic, resumable output as a merge), :mod:`adapter` (PEFT's tensor names and ``adapter_config.json``)
and :mod:`report` (the model card, the table and the JSON report). Imports run from later stages to earlier ones.
"""
