"""Configuration of `canvaslab train unified`: the unified (Show-o) model's pre-training stages and
instruction tuning, one YAML per stage (configs/train/unified-*.yaml), `key=value` overrides.

Each step mixes three kinds of rows, each from its own parquet source, with its own batch size and
loss weight (the reference's t2i / lm / mmu flows):
- t2i: images with a caption or a class name -> masked image-token prediction (cross-entropy on the
  masked tokens, mask ratio from the cosine schedule, caption dropout for guidance);
- lm: text -> next-token cross-entropy;
- mmu: image + question + answer (or a caption) -> next-token cross-entropy on the answer.
A batch size of 0 switches a kind off (e.g. stage 1 without mmu, instruction tuning without t2i).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from canvaslab.train.config import CheckpointSection, LogSection, MixedPrecision, _Section


class UnifiedModelSection(_Section):
    base: str = Field("show-o", description="Show-o folder, cached hub id or alias (show-o, show-o-512), or our checkpoint")
    magvit: str | None = Field(None, description="MAGVIT-v2 folder (default: the model's magvit/ or showlab/magvitv2)")
    tokenizer: str | None = Field(None, description="text tokenizer folder (default: the model's or its llm_model_path)")


class UnifiedDataSection(_Section):
    t2i: list[str] = Field(default_factory=list, description="parquet files/folders/globs: image + caption (or label + class_name)")
    lm: list[str] = Field(default_factory=list, description="parquet: text")
    mmu: list[str] = Field(default_factory=list, description="parquet: image + answer (+ question); captions work as answers")
    image_column: str = "image"
    caption_column: str = "caption"
    class_column: str = Field("class_name", description="t2i rows without a caption use their class name as the text")
    text_column: str = "text"
    question_column: str = "question"
    answer_column: str = "answer"
    key_column: str = Field("key", description="row ids, read when present: what log.samples writes")
    resolution: int = Field(256, ge=16, description="images are resized (short side) and centre-cropped to this, a multiple of 16")
    max_text_len: int = Field(128, ge=4, description="t2i text tokens (the reference's max_seq_length)")
    max_seq_len: int = Field(256, ge=8, description="lm and mmu text tokens after the prefix")
    shuffle_buffer: int = Field(1000, ge=1, description="rows shuffled per stream (data/streaming.py)")

    @model_validator(mode="after")
    def _multiple(self) -> UnifiedDataSection:
        if self.resolution % 16:
            raise ValueError(f"data.resolution must be a multiple of 16 (MAGVIT's x16 tokens), got {self.resolution}")
        return self


class UnifiedTrainSection(_Section):
    batch_size_t2i: int = Field(4, ge=0)
    batch_size_lm: int = Field(1, ge=0)
    batch_size_mmu: int = Field(2, ge=0)
    t2i_coeff: float = Field(1.0, ge=0)
    lm_coeff: float = Field(0.1, ge=0)
    mmu_coeff: float = Field(1.0, ge=0)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="t2i: empty text, for classifier-free guidance")
    min_masking_rate: float = Field(0.0, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(1000, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: MixedPrecision = Field("no", description="fp16 needs a GPU; bf16 works on CPU too")
    gradient_checkpointing: bool = False
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _something(self) -> UnifiedTrainSection:
        if not (self.batch_size_t2i or self.batch_size_lm or self.batch_size_mmu):
            raise ValueError("every batch size is 0: give t2i, lm or mmu rows (train.batch_size_t2i ...)")
        return self


class UnifiedValidationSection(_Section):
    every: int = Field(0, ge=0, description="steps between validations (0: only at the end)")
    prompts: list[str] = Field(default_factory=list, description="text-to-image prompts rendered into a grid")
    images: list[str] = Field(default_factory=list, description="images to ask `question` about")
    question: str = "What is in this image?"
    steps: int = Field(12, ge=1)
    guidance_scale: float = Field(1.75, ge=0)
    max_new_tokens: int = Field(32, ge=1)
    seed: int = 0


class UnifiedTrainConfig(_Section):
    objective: Literal["unified"] = "unified"
    output: str = "runs/unified"
    resume: str | None = None
    model: UnifiedModelSection = Field(default_factory=UnifiedModelSection)
    data: UnifiedDataSection = Field(default_factory=UnifiedDataSection)
    train: UnifiedTrainSection = Field(default_factory=UnifiedTrainSection)
    validation: UnifiedValidationSection = Field(default_factory=UnifiedValidationSection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)

    @model_validator(mode="after")
    def _sources(self) -> UnifiedTrainConfig:
        for kind in ("t2i", "lm", "mmu"):
            if getattr(self.train, f"batch_size_{kind}") and not getattr(self.data, kind):
                raise ValueError(f"train.batch_size_{kind} is set but data.{kind} names no parquet source; "
                                 f"give data.{kind} or set train.batch_size_{kind}=0")
        return self

    @property
    def output_dir(self):
        from pathlib import Path

        return Path(self.output)
