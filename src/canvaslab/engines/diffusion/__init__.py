"""Diffusion engine: Stable Diffusion 1.x / 2.x / XL through diffusers.

`models` resolves names (aliases, hub ids, local folders, single files), detects what a model is and
loads the matching diffusers pipeline. Nothing heavy is imported here: torch and diffusers load only
when a pipeline is actually built, so `canvaslab --help` and the classical engines stay fast.
"""
