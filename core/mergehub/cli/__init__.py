"""The ``mergehub`` command line: one module per verb."""
