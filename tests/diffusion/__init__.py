"""Diffusion engine tests. A package so its conftest does not take over the name `conftest`,
which the top-level tests import helpers from."""
