"""The unified masked-token model (Show-o family): our own implementation of its model layer.

One Phi-1.5-style transformer answers questions about an image by next-token prediction and
generates, inpaints and extends images by predicting masked MAGVIT-v2 image tokens (MaskGIT).

Modules (import them directly; this package imports nothing heavy):

- `config`     UnifiedConfig (the released config.json + backbone), MagvitConfig, tiny test configs
- `tokens`     TokenLayout: the id layout (text, special tokens, image codes, mask) and code<->id
- `prompts`    generation and understanding token sequences in Show-o's formats
- `attention`  omni-attention masks, one builder per sequence kind
- `model`      UnifiedModel: the backbone + lm_head (transformers' Phi with qk-LayerNorm)
- `magvit`     Magvit: encoder/decoder with lookup-free quantization
- `sampling`   MaskGIT image decoding and text decoding (with a key/value cache)
- `loading`    released-layout folders in and out, offline

See docs/unified.md for the layout, the masks and what was checked against the reference.
"""
