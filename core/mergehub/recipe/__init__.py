"""Recipe text -> validated :class:`~mergehub.recipe.config.Recipe`.

YAML with line numbers (:mod:`.yamlsource`), the JSON Schema of a recipe (:mod:`.schema`), schema
problems as sentences (:mod:`.validate`), the recipe's types and cross-key checks (:mod:`.config`),
parameter precedence and gradients (:mod:`.params`, :mod:`.paramcheck`) and ``chat_template`` values.
Nothing here opens a model.
"""
