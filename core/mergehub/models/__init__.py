"""Finding and reading the input models: local directories and the Hub (:mod:`.loader`), LoRA adapters,
architecture layouts, the vocabulary and tokenizer, and what ``mergehub inspect`` shows. Headers are read
while planning; tensor data only when the runner asks for it.
"""
