"""What :mod:`mergehub.testing` re-exports: pytest fixtures with tiny real checkpoints, the CLI runner, and
the plugin contract checks a plugin's own tests call on its installed distribution.
"""
