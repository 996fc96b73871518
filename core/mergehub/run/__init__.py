"""Plan -> files on disk. The runner takes one :class:`~mergehub.run.options.RunOptions` and runs each
stage through an executor plugin (:mod:`.local` is the built-in one) into a locked partial directory
(:mod:`.output`), with a journal for ``--resume``, clean stops on signals, and a model card.
"""
