"""The plugin machinery: hook specifications, the spec objects plugins return, discovery through
entry points, the validated registry, and the catalogue of this repository's standard distributions.

Everything a plugin needs from here is re-exported by :mod:`mergehub`; the rest is internal.
"""
