"""Training: fine-tune inpainting and editing models (`canvaslab train inpaint|edit`).

`config` reads and validates the YAML, `components` loads and widens the base model (`expand`),
`trainer.train` runs the accelerate loop with the losses of `objectives`, and `checkpoints`,
`validation`, `export` and `cache` do what their names say. docs/training.md describes it all.
"""
