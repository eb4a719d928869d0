"""Training configs: YAML + dotted overrides, strict keys, one-line errors, --print-config."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from typer.testing import CliRunner  # noqa: E402

from canvaslab.cli.main import app  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from canvaslab.train.config import load_config, parse_override  # noqa: E402


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_overrides_parse_values_as_yaml():
    assert parse_override("train.max_steps=200") == (["train", "max_steps"], 200)
    assert parse_override("validation.prompts=[a cat, a dog]") == (["validation", "prompts"], ["a cat", "a dog"])
    assert parse_override("resume=null") == (["resume"], None)
    assert parse_override("output=runs/a=b") == (["output"], "runs/a=b")
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_override("train.max_steps")


def test_file_then_overrides(tmp_path: Path):
    path = write(tmp_path, "data:\n  path: murals\ntrain:\n  mode: full\n  max_steps: 10\n")
    config = load_config(path, ["train.max_steps=20", "masks.mixture={boxes: 2}"], objective="inpaint")
    assert config.train.mode == "full" and config.train.max_steps == 20
    assert config.masks.mixture == {"boxes": 2}
    assert config.data.path == "murals" and config.objective == "inpaint"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "unknown config key 'train.max_step'; allowed here: .*max_steps"),
        ("train.mode=lora2", "config train.mode"),
        ("train.max_steps=0", "config train.max_steps"),
        ("data.bucket_step=60", "multiple of 8"),
        ("cache.latents=true", "cannot follow random crops"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, override: str, message: str):
    path = write(tmp_path, "data:\n  path: d\n  random_flip: true\n")
    with pytest.raises(InputError, match=message) as info:
        load_config(path, [override], objective="inpaint")
    assert "\n" not in str(info.value)


def test_missing_data_path_and_wrong_objective(tmp_path: Path):
    with pytest.raises(InputError, match="'data' is required"):
        load_config(write(tmp_path, "train:\n  max_steps: 3\n"), [], objective="inpaint")
    with pytest.raises(InputError, match="run `canvaslab train edit`"):
        load_config(write(tmp_path, "objective: edit\ndata:\n  path: d\n"), [], objective="inpaint")


def test_print_config_shows_the_resolved_values(tmp_path: Path):
    path = write(tmp_path, "data:\n  path: murals\n")
    result = CliRunner().invoke(app, ["train", "inpaint", str(path), "train.max_steps=7", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "max_steps: 7" in result.output and "path: murals" in result.output
    defaults = CliRunner().invoke(app, ["train", "--print-config"])
    assert defaults.exit_code == 0 and "mode: lora" in defaults.output


def test_cli_errors_exit_2_with_one_line(tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "inpaint", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    result = CliRunner().invoke(app, ["train", "edit", "data.path=x", "train.bogus=1"])
    assert result.exit_code == 2 and "unknown config key 'train.bogus'" in result.output


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path: Path):
    config = load_config(path, [], objective=None)
    assert config.train.max_steps > 0
    if config.objective == "unified":
        assert config.data.t2i or config.data.mmu
    else:
        assert config.data.path


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load(path: Path):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


@pytest.mark.parametrize("objective", ["inpaint", "unified"])
def test_mixed_precision_no_is_accepted_as_yaml_reads_it(tmp_path: Path, objective: str):
    """YAML 1.1 reads a bare `no` as false: `train.mixed_precision=no` (docs/training.md) and
    `mixed_precision: no` in a file both mean no mixed precision; a bare `yes` stays an error."""
    data = ["data.path=d"] if objective == "inpaint" else ["data.t2i=[t.parquet]", "train.batch_size_lm=0",
                                                           "train.batch_size_mmu=0"]
    assert load_config(None, [*data, "train.mixed_precision=no"], objective=objective).train.mixed_precision == "no"
    path = write(tmp_path, "train:\n  mixed_precision: no\n")
    assert load_config(path, data, objective=objective).train.mixed_precision == "no"
    with pytest.raises(InputError, match="config train.mixed_precision: .*'no', 'fp16' or 'bf16'") as info:
        load_config(None, [*data, "train.mixed_precision=yes"], objective=objective)
    assert "\n" not in str(info.value)


def test_the_smoke_run_in_the_training_docs_parses():
    """Every key=value of the documented smoke command is a valid override."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    command = docs.split("canvaslab train inpaint configs/train/inpaint-lora.yaml", 1)[1].split("\n```", 1)[0]
    overrides = [word for word in command.replace("\\\n", " ").split() if "=" in word and not word.startswith("-")]
    config = load_config(CONFIGS / "train" / "inpaint-lora.yaml", overrides, objective="inpaint")
    assert config.train.mixed_precision == "no" and config.train.max_steps == 20
