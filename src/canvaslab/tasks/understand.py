"""The understand task: answer questions about images with the unified model (Show-o).

Every question is asked about every image. Images may be files, arrays, PIL images or folders
(searched recursively, in name order). The result holds one answer per image and question, in that
order, and a recipe (request with the seed used, inputs with their sha256) like the image tasks'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canvaslab import __version__
from canvaslab.core.image import DEFAULT_MAX_PIXELS
from canvaslab.core.notices import collect_notices
from canvaslab.engines import get_engine
from canvaslab.engines.unified.engine import answer_questions
from canvaslab.errors import InputError
from canvaslab.tasks.batch import find_images
from canvaslab.tasks.common import ImageInput, describe_input, open_image, resolve_seed
from canvaslab.tasks.requests import UnderstandRequest, request_from


@dataclass(frozen=True)
class Answer:
    image: str  # the input's path, or "image N" for in-memory inputs
    question: str
    answer: str


@dataclass
class UnderstandResult:
    """Answers image-major (every question of image 0, then image 1, ...), the seed, and the recipe."""

    answers: list[Answer]
    seed: int
    recipe: dict[str, Any]
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def answer(self) -> str:
        """The answer, when one question was asked about one image."""
        if len(self.answers) != 1:
            raise InputError(f"there are {len(self.answers)} answers; read .answers")
        return self.answers[0].answer

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": [{"image": a.image, "question": a.question, "answer": a.answer} for a in self.answers],
            "seed": self.seed,
            "notices": self.notices,
            "seconds": round(self.seconds, 3),
            "recipe": self.recipe,
        }


def understand(
    images: ImageInput | Sequence[ImageInput],
    request: UnderstandRequest | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **params: Any,
) -> UnderstandResult:
    """Ask each of `questions` about each image; parameters are the fields of `UnderstandRequest`.

        result = canvaslab.understand("photo.jpg", questions=["What is this?", "Which colour is it?"])
        for a in result.answers:
            print(a.question, "->", a.answer)
    """
    request = request_from(UnderstandRequest, request, params)  # type: ignore[arg-type]
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs, seed, engine options
        sources = expand_inputs(images)
        loaded = [open_image(source, max_pixels) for source in sources]
        seed = resolve_seed(request.seed)
        engine = get_engine(request.engine)
        options = engine.parse_options(request.options)
        # 2. answers
        texts = answer_questions(
            [image.rgb for image in loaded], request.questions, request.generation(), options,
            sample=request.sample, temperature=request.temperature, top_k=request.top_k,
            max_new_tokens=request.max_new_tokens, seed=seed, use_cache=request.kv_cache,
            batch_size=request.batch_size,
        )
        # 3. result and recipe
        names = [_name(source, index) for index, source in enumerate(sources)]
        answers = [
            Answer(names[i], question, texts[i][q]) for i in range(len(sources)) for q, question in enumerate(request.questions)
        ]
        body = request.model_dump(mode="json")
        body["seed"] = seed
        inputs = [describe_input(source, image) for source, image in zip(sources, loaded)]
        recipe = {"canvaslab": __version__, "task": "understand", "request": body, "inputs": inputs}
    return UnderstandResult(answers, seed, recipe, list(notes), time.perf_counter() - started)


def expand_inputs(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One entry per image: a list as given, folders replaced by their images (recursively, sorted)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = find_images(Path(item))
            if not found:
                raise InputError(f"folder {item} holds no images (.png, .jpg, .jpeg, .webp)")
            out.extend(found)
        else:
            out.append(item)
    if not out:
        raise InputError("understand needs at least one image")
    return out


def _name(source: ImageInput, index: int) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"image {index}"
