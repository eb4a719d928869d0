"""Training data: random mask generators (`masks`) for teaching models to inpaint and outpaint.

Imports numpy, Pillow and OpenCV only, never torch, so data preparation runs in light worker processes.
"""
