"""The shipped presets (``*.toml``) and accelerate configs (``accelerate/``): data only.

A package so that a wheel installs them beside ``cascade_booth``, where ``cascade_booth.presets``
finds them (by path: importing ``configs`` could pick up a user's own package of that name).
"""
