"""`understand`: questions about images with the unified model, through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import canvaslab  # noqa: E402
from canvaslab.engines.unified.engine import square_input  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402
from canvaslab.tasks.requests import UnderstandRequest  # noqa: E402
from conftest import write_png  # noqa: E402

from . import tiny  # noqa: E402

QUESTIONS = ["what is in the picture?", "is it day or night?"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.save_chatty_bundle(tmp_path_factory.mktemp("understand") / "chatty")


@pytest.fixture(scope="module")
def images(photo):
    """Three different real crops, none square (centre-cropped like the reference)."""
    return [np.ascontiguousarray(photo[:80, :100]), np.ascontiguousarray(photo[20:, 50:]), np.ascontiguousarray(photo[::-1, :70])]


def understand(images, folder, **params):
    return canvaslab.understand(images, **{"questions": QUESTIONS, "model": str(folder), "max_new_tokens": 12, **params})


def texts(result):
    return [a.answer for a in result.answers]


def test_every_question_about_every_image_in_order(images, folder):
    result = understand(images, folder)
    assert [(a.image, a.question) for a in result.answers] == [
        (f"image {i}", q) for i in range(3) for q in QUESTIONS
    ]
    answers = texts(result)
    assert all(answers) and len(set(answers)) > 1  # the tiny model's answers depend on image and question
    assert result.recipe["task"] == "understand" and result.recipe["request"]["questions"] == QUESTIONS
    assert len(result.recipe["inputs"]) == 3 and all("sha256" in entry for entry in result.recipe["inputs"])


def test_batched_answers_equal_one_by_one_answers(images, folder):
    batched = texts(understand(images, folder, batch_size=6))
    rows_of_two = texts(understand(images, folder, batch_size=2))
    alone = [understand(image, folder, questions=[q]).answer for image in images for q in QUESTIONS]
    assert batched == rows_of_two == alone


def test_kv_cache_gives_the_same_answers(images, folder):
    assert texts(understand(images, folder, kv_cache=True)) == texts(understand(images, folder, kv_cache=False))


def test_reference_separator_splits_one_question_into_several(images, folder):
    joined = understand(images[0], folder, questions=[" *** ".join(QUESTIONS)])
    assert [a.question for a in joined.answers] == QUESTIONS
    assert texts(joined) == texts(understand(images[0], folder))


def test_sampling_is_seeded_and_its_settings_need_sample(images, folder):
    a = understand(images, folder, sample=True, temperature=1.5, top_k=20, seed=4)
    b = understand(images, folder, sample=True, temperature=1.5, top_k=20, seed=4)
    c = understand(images, folder, sample=True, temperature=1.5, top_k=20, seed=5)
    assert texts(a) == texts(b) and texts(a) != texts(c) and a.seed == 4
    with pytest.raises(InputError, match="--temperature and --top-k only apply with --sample"):
        understand(images, folder, temperature=0.7)


def test_bad_requests_are_one_line(images, folder):
    with pytest.raises(InputError, match="needs a question"):
        understand(images, folder, questions=[])
    with pytest.raises(InputError, match="needs a question"):
        canvaslab.understand(images, model=str(folder))
    with pytest.raises(InputError, match="option schedule does not apply to understand"):
        understand(images, folder, options={"schedule": "linear"})
    with pytest.raises(InputError, match="understand runs on the unified engine only"):
        understand(images, folder, engine="diffusion")


def test_missing_model_is_one_sentence(images, tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no-model") as info:
        understand(images, tmp_path / "no-model")
    assert "\n" not in str(info.value)


def test_clip_variant_is_refused_clearly(images, tmp_path):
    clip = tiny.save_clip_variant_bundle(tmp_path / "clip")
    with pytest.raises(InputError, match="CLIP-ViT variant.*use a VQ-token model"):
        understand(images, clip)


def test_images_are_centre_cropped_to_the_native_square():
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)
    wide[:, 40:80] = (0, 255, 0)
    wide[:, 80:] = (0, 0, 255)
    square = square_input(wide, 64)  # short side 40 -> 64, long 120 -> 192, centre 64 columns = the green third
    assert square.shape == (64, 64, 3)
    assert (square[:, 2:-2, 1] > 200).all() and (square[:, 2:-2, [0, 2]] < 50).all()


# -- CLI -------------------------------------------------------------------------------------------


def run_cli(*args):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("understand-images")
    return [write_png(root / name, image) for name, image in zip(["a.png", "sub/b.png", "sub/c.png"], images)]


def test_cli_json_answers_for_several_images_and_questions(files, folder, images):
    done = run_cli("--json", "understand", files[0], files[1], "--question", QUESTIONS[0], "--question", QUESTIONS[1],
                   "--model", folder, "--max-new-tokens", 12)
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert set(data) == {"answers", "seed", "notices", "seconds", "recipe"}
    assert [(row["image"], row["question"]) for row in data["answers"]] == [
        (str(f), q) for f in files[:2] for q in QUESTIONS
    ]
    assert [row["answer"] for row in data["answers"]] == texts(understand(images[:2], folder))
    assert data["recipe"]["inputs"][1]["path"] == str(files[1].resolve())


def test_cli_text_blocks_and_folders(files, folder):
    done = run_cli("understand", files[0].parent, "--question", "what is it? *** why?", "--model", folder,
                   "--max-new-tokens", 6)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0] == str(files[0]) and lines[1] == "  Q: what is it?" and lines[2].startswith("  A: ")
    assert lines[3] == "  Q: why?" and lines[5] == "" and lines[6] == str(files[1])
    assert sum(line.startswith("  A: ") for line in lines) == 6  # 3 images (the folder, recursively) x 2


def test_cli_missing_model_exits_3_in_one_line(files, tmp_path):
    done = run_cli("understand", files[0], "--question", "what?", "--model", tmp_path / "none")
    assert done.exit_code == 3
    assert len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output


def test_cli_flags_cover_every_request_field():
    import typer

    from canvaslab.cli.main import app

    command = typer.main.get_command(app).commands["understand"]
    assert set(UnderstandRequest.model_fields) <= {p.name for p in command.params}


def test_understand_help_does_not_load_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from canvaslab.cli.main import app\n"
        "assert CliRunner().invoke(app, ['understand', '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
