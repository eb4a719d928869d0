"""Loading the learned erasers from local files into one calling convention per engine.

- `LamaNetwork.predict(image, hole)`: (1, 3, H, W) in [0, 1] and (1, 1, H, W) in {0, 1}, H and W
  multiples of 8 -> the inpainted image, (1, 3, H, W) in [0, 1] (LaMa's own `inpainted` output, which
  IOPaint's TorchScript file also returns).
- `MiganNetwork.predict(x)`: MI-GAN's (1, 4, R, R) input -> (1, 3, R, R) in about [-1, 1]; or, for
  MI-GAN's ONNX pipeline file, `pipeline(image, mask)` on uint8 tensors with 255 = known.

LaMa checkpoints are PyTorch Lightning files that may hold pickled objects besides the tensors (hyper-
parameters, callback states). They are read with a restricted unpickler: tensors and plain containers
load, every other class becomes an inert placeholder, so no code from the file runs. Loaded networks
stay cached per (file, its size and mtime, device).
"""

from __future__ import annotations

import functools
import pickle
import re
import threading
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from canvaslab.engines.learned.files import classify, lama_checkpoint_files
from canvaslab.engines.learned.lama import FFCSpec, LamaConfig, LamaGenerator, inpaint_tensor
from canvaslab.engines.learned.migan import MiganGenerator, config_from_state_dict
from canvaslab.errors import InputError, ModelNotAvailableError

_LOCK = threading.Lock()


@dataclass
class LamaNetwork:
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    multiple: int
    device: torch.device
    source: str  # checkpoint | torchscript


@dataclass
class MiganNetwork:
    resolution: int | None  # None for the ONNX pipeline, which works at any size
    device: torch.device
    source: str  # state-dict | torchscript | onnx | onnx-pipeline
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    pipeline: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: no Apple GPU is available here; use --device cpu")
    return torch.device(name)


def load_lama(path: Path, device: str = "auto") -> LamaNetwork:
    with _LOCK:
        return _load_lama(str(path.resolve()), _signature(path), str(torch_device(device)))


def load_migan(path: Path, device: str = "auto") -> MiganNetwork:
    with _LOCK:
        return _load_migan(str(path.resolve()), _signature(path), str(torch_device(device)))


def _signature(path: Path) -> tuple[tuple[int, int], ...]:
    """(mtime, size) of every file the model is read from, so an edited file is read again."""
    files = lama_checkpoint_files(path) if classify(path) == "lama-checkpoint" else (path,)
    return tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files or (path,))


@functools.lru_cache(maxsize=2)
def _load_lama(path_name: str, signature: tuple, device_name: str) -> LamaNetwork:
    path, device = Path(path_name), torch.device(device_name)
    kind = classify(path)
    if kind == "torchscript":
        module = _load_torchscript(path, device)
        return LamaNetwork(lambda image, hole: module(image, hole), 8, device, "torchscript")
    files = lama_checkpoint_files(path)
    if files is None:
        raise InputError(f"{path} is not a LaMa model: give {path.stem}'s release folder (config.yaml + models/best.ckpt), "
                         "its best.ckpt, or IOPaint's big-lama.pt")
    checkpoint, config_file = files
    config, concat_mask = lama_config(config_file)
    state = read_checkpoint(checkpoint)
    tensors = state.get("state_dict", state) if isinstance(state, dict) else None
    weights = {k[len("generator."):]: v for k, v in (tensors or {}).items() if isinstance(k, str) and k.startswith("generator.")}
    if not weights:
        raise InputError(f"{checkpoint} holds no generator.* weights: it is not a LaMa training checkpoint")
    generator = LamaGenerator(config)
    _load_weights(generator, weights, checkpoint)
    generator.to(device).eval()
    if concat_mask != (config.input_nc == 4):
        raise InputError(f"{config_file}: concat_mask={concat_mask} does not match the generator's input_nc={config.input_nc}")
    return LamaNetwork(lambda image, hole: inpaint_tensor(generator, image, hole), config.multiple, device, "checkpoint")


@functools.lru_cache(maxsize=2)
def _load_migan(path_name: str, signature: tuple, device_name: str) -> MiganNetwork:
    path, device = Path(path_name), torch.device(device_name)
    kind = classify(path)
    if kind == "onnx":
        return _load_migan_onnx(path, device)
    if kind == "torchscript":
        module = _load_torchscript(path, device)
        try:
            resolution = config_from_state_dict(dict(module.state_dict())).resolution
        except ValueError:
            raise InputError(f"{path} is a TorchScript file but not of MI-GAN's generator (no encoder.b<res> weights)") from None
        return MiganNetwork(resolution, device, "torchscript", predict=lambda x: module(x))
    if kind != "state-dict":
        raise InputError(f"{path} is a LaMa checkpoint, not an MI-GAN model: use --engine lama")
    state = _torch_load(path, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        config = config_from_state_dict(state)
    except (ValueError, AttributeError, TypeError):
        raise InputError(f"{path} is not an MI-GAN generator state dict (no encoder.b<res> weights)") from None
    generator = MiganGenerator(config)
    _load_weights(generator, state, path)
    generator.to(device).eval()
    return MiganNetwork(config.resolution, device, "state-dict", predict=generator)


def _load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Path) -> None:
    own = module.state_dict()
    # in the network's own order, so the message names the first layer that differs
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{wrong[0]} is {tuple(weights[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise InputError(f"{path}: the weights do not fit the network its config describes ({what})")
    module.load_state_dict(weights)


def _load_torchscript(path: Path, device: torch.device) -> Any:
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is what IOPaint's files are
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} could not be read as TorchScript: {first}") from None
    return module.eval()


def _load_migan_onnx(path: Path, device: torch.device) -> MiganNetwork:
    try:
        import onnxruntime
    except ImportError:
        raise ModelNotAvailableError(
            f"{path.name} is an ONNX model, which needs onnxruntime: pip install 'canvaslab[onnx]' (or onnxruntime)"
        ) from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings about unused initialisers are not the user's concern
    # As many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads), not onnxruntime's own default.
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} could not be read as an ONNX model: {first}") from None
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    output = session.get_outputs()[0].name
    if sorted(names) == ["image", "mask"]:  # MI-GAN's pipeline: uint8 in, uint8 out, 255 = known
        def pipeline(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            result = session.run([output], {"image": image.cpu().numpy(), "mask": mask.cpu().numpy()})[0]
            return torch.from_numpy(result)

        return MiganNetwork(None, device, "onnx-pipeline", pipeline=pipeline)
    shape = inputs[0].shape if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[1] != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
        raise InputError(f"{path} is not an MI-GAN ONNX file: expected inputs image + mask (the pipeline) or one "
                         f"(1, 4, R, R) input (the generator), got {[(i.name, i.shape) for i in inputs]}")

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([output], {names[0]: x.cpu().numpy()})[0]).to(x.device)

    return MiganNetwork(int(shape[2]), device, "onnx", predict=predict)


# -- LaMa's config.yaml ---------------------------------------------------------------------------

_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
_FFC_KEYS = {"ratio_gin", "ratio_gout", "enable_lfu"}
_GENERATOR_KEYS = {
    "kind", "input_nc", "output_nc", "ngf", "n_downsampling", "n_blocks", "max_features", "add_out_act",
    "init_conv_kwargs", "downsample_conv_kwargs", "resnet_conv_kwargs", "padding_type",
}


def lama_config(path: Path) -> tuple[LamaConfig, bool]:
    """The generator of a LaMa training config (OmegaConf `${a.b}` references resolved) and whether the
    mask is concatenated to the input; InputError naming the setting for anything this network lacks."""
    try:
        import yaml
    except ImportError:
        raise ModelNotAvailableError("reading LaMa's config.yaml needs PyYAML: pip install 'canvaslab[learned]'") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path} is not a readable YAML file: {str(exc).splitlines()[0]}") from None
    generator = data.get("generator") if isinstance(data, dict) else None
    if not isinstance(generator, dict):
        raise InputError(f"{path} has no generator section: it is not a LaMa training config")
    g = {key: _resolve(value, data, path) for key, value in generator.items()}
    if g.get("kind") != "ffc_resnet":
        raise InputError(f"{path}: generator kind {g.get('kind')!r} is not supported (LaMa's FFC generator is ffc_resnet)")
    for key, value in g.items():
        if key not in _GENERATOR_KEYS and value not in (None, False, {}, []):
            raise InputError(f"{path}: generator setting {key}={value!r} is not supported by this LaMa implementation")
    if g.get("padding_type", "reflect") != "reflect":
        raise InputError(f"{path}: padding_type {g['padding_type']!r} is not supported (LaMa uses reflect)")
    training = data.get("training_model") or {}
    for key in ("add_noise_kwargs", "const_area_crop_kwargs"):
        if training.get(key):
            raise InputError(f"{path}: training_model.{key} is not supported by this LaMa implementation")
    activation = {True: "tanh", "tanh": "tanh", "sigmoid": "sigmoid", False: "none", None: "none"}.get(g.get("add_out_act", True))
    if activation is None:
        raise InputError(f"{path}: add_out_act {g.get('add_out_act')!r} is not supported (sigmoid, tanh or false)")
    defaults = LamaConfig()
    config = LamaConfig(
        input_nc=int(g.get("input_nc", 4)), output_nc=int(g.get("output_nc", 3)), ngf=int(g.get("ngf", 64)),
        n_downsampling=int(g.get("n_downsampling", 3)), n_blocks=int(g.get("n_blocks", 9)),
        max_features=int(g.get("max_features", defaults.max_features)), out_act=activation,
        init=_ffc_spec(g.get("init_conv_kwargs"), path, "init_conv_kwargs"),
        down=_ffc_spec(g.get("downsample_conv_kwargs"), path, "downsample_conv_kwargs"),
        resnet=_ffc_spec(g.get("resnet_conv_kwargs"), path, "resnet_conv_kwargs"),
    )
    return config, bool(training.get("concat_mask", True))


def _ffc_spec(section: Any, path: Path, name: str) -> FFCSpec:
    section = section or {}
    other = sorted(set(section) - _FFC_KEYS)
    if other:
        raise InputError(f"{path}: generator.{name}.{other[0]} is not supported by this LaMa implementation")
    return FFCSpec(float(section.get("ratio_gin", 0)), float(section.get("ratio_gout", 0)), bool(section.get("enable_lfu", False)))


def _resolve(value: Any, root: dict[str, Any], path: Path, depth: int = 0) -> Any:
    """A config value with `${dotted.key}` references replaced by what they point to (as OmegaConf would)."""
    if isinstance(value, dict):
        return {key: _resolve(item, root, path, depth) for key, item in value.items()}
    if not isinstance(value, str) or not (match := _REFERENCE.match(value.strip())):
        return value
    if depth > 32:
        raise InputError(f"{path}: the reference {value} never resolves (a cycle)")
    target: Any = root
    for part in match.group(1).split("."):
        if not isinstance(target, dict) or part not in target:
            raise InputError(f"{path}: {value} refers to a setting the file does not have")
        target = target[part]
    return _resolve(target, root, path, depth + 1)


# -- checkpoints without running their pickles -----------------------------------------------------

class _Placeholder:
    """Stands in for any class a checkpoint pickled besides tensors: takes whatever it is given, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name.startswith("_rebuild_"):
            return super().find_class(module, name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in {"Size", "device", "float32", "float16", "bfloat16", "int64"}:
            return super().find_class(module, name)
        return type(name, (_Placeholder,), {"__module__": "canvaslab.placeholder"})


_RESTRICTED = types.ModuleType("canvaslab_restricted_pickle")
_RESTRICTED.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_RESTRICTED.load = pickle.load  # type: ignore[attr-defined]


def read_checkpoint(path: Path) -> Any:
    """A torch checkpoint's contents: torch's safe loader when it is enough, else the restricted unpickler."""
    try:
        return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError:
        return _torch_load(path, weights_only=False, pickle_module=_RESTRICTED)


def _torch_load(path: Path, **kwargs: Any) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", **kwargs)
    except pickle.UnpicklingError:
        if kwargs.get("weights_only"):
            raise
        raise InputError(f"{path} is not a readable PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable PyTorch checkpoint: {first}") from None
