"""The KFP components of kic: thin signatures over the ``kic`` package.

Each ``<name>/component.py`` is a lightweight component whose body imports
``kic.runtime.steps`` and calls one function; ``<name>/component.yaml`` is its
compiled spec, committed so other pipelines can load it.
"""
