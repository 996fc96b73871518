"""Words every stage shares: errors that carry a hint and a location (:mod:`.errors`), dtype names (:mod:`.dtypes`).

Imports nothing else from mergehub, so every other package may import it.
"""
