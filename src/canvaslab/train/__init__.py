"""Training: turning base checkpoints into inpainting/editing models and fine-tuning them.

`expand` widens a plain 4-channel UNet's input so it can take a mask and masked image (9 channels)
or the latents of images to edit (4 + 4N channels) while still reproducing the base model at step 0.
"""
