"""Learned erasers: our own LaMa and MI-GAN networks (lama.py, migan.py), the files they load from
(files.py: where and what kind, no torch; loading.py: reading them), and the engines (engine.py)."""
