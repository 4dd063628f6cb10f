"""Saving and loading models without running code from the file.

A model file holds *weights only*: a safetensors file (``.safetensors``) or a ``torch.save`` dict read
back with ``torch.load(weights_only=True)``. The architecture comes from code: a name in
:data:`certify.models.MODELS` or a ``module:function`` factory the user names. :func:`save_model`
records the architecture name and its keyword arguments beside the weights, so ``load_model(path)``
alone rebuilds a model saved by hypercert.

Example:
    >>> import tempfile, torch
    >>> from certify.models import build_model
    >>> from certify.model_io import load_model, save_model
    >>> net = build_model("mlp", in_channels=1, in_size=8, num_classes=10)
    >>> path = tempfile.mkdtemp() + "/mlp.pt"
    >>> _ = save_model(net, path, arch="mlp", arch_kwargs={"in_channels": 1, "in_size": 8, "num_classes": 10})
    >>> back = load_model(path)
    >>> bool(torch.equal(back[1].weight, net[1].weight))
    True
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import MODELS, build_model

__all__ = ["FORMAT", "atomic_save", "atomic_write", "load_model", "resolve_factory", "save_model"]

#: The ``format`` tag of a hypercert model file written by ``torch.save``.
FORMAT = "hypercert-model"


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    """The builder for ``arch``: a registered name (see :data:`certify.models.MODELS`) or ``module:function``."""
    if arch in MODELS:
        return lambda **kw: build_model(arch, **kw)
    if ":" not in arch:
        raise ValueError(
            f"unknown architecture {arch!r}; use one of {', '.join(MODELS)} or a 'module:function' factory"
        )
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import the factory module {module_name!r} of --arch {arch!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no callable {attr!r} (from --arch {arch!r})")
    return factory


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    A kill at any moment leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output_file(path: str | Path | None, what: str, example: str = "results.json") -> None:
    """Raise ``ValueError`` now if ``path`` cannot become a file, so that a long run does not find out
    only when it writes its results.

    Refused: a directory, a path under a file or under a dangling link, a folder that cannot be
    written, and a name the system rejects (too long, ...). Missing parent folders are fine: the
    writers create them.

    Example:
        >>> import tempfile
        >>> check_output_file(tempfile.mkdtemp(), "--json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --json ... is a directory; give a file path, e.g. .../results.json
    """
    if path is None:
        return
    if str(path) == "":
        raise ValueError(f"{what}: empty path")
    path = Path(path)
    try:
        if path.is_dir():
            raise ValueError(f"{what} {path} is a directory; give a file path, e.g. {path / example}")
        for q in path.parents:
            if q.is_symlink() and not q.exists():
                raise ValueError(f"{what} {path}: {q} is a dangling link")
            if q.exists():
                if not q.is_dir():
                    raise ValueError(f"{what} {path}: {q} is a file, not a directory")
                if not os.access(q, os.W_OK | os.X_OK):
                    raise ValueError(f"{what} {path}: {q} is not writable")
                break
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"{what} {path}: the file is not writable")
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror or exc}") from None


def check_outputs(outputs: Mapping[str, tuple[str | Path | None, str]]) -> None:
    """:func:`check_output_file` on every ``flag -> (path, example name)``; also refuse two flags that
    name the same file (one would overwrite the other). ``None`` paths are skipped.

    Example:
        >>> check_outputs({"--out": ("r.json", "report.json"), "--csv": ("r.json", "records.csv")})
        Traceback (most recent call last):
        ValueError: --out and --csv name the same file, r.json
    """
    seen: dict[Path, str] = {}
    for flag, (p, example) in outputs.items():
        if p is None:
            continue
        check_output_file(p, flag, example)
        key = Path(os.path.abspath(Path(p).expanduser()))
        if key in seen:
            raise ValueError(f"{seen[key]} and {flag} name the same file, {p}")
        seen[key] = flag


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_model(
    model: nn.Module,
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights (and its architecture name, when given) to ``path``, atomically.

    ``.safetensors`` paths are written with safetensors (metadata as JSON strings in its header); any
    other suffix with ``torch.save`` of a plain dict of tensors and JSON-able values.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"arch": arch, "arch_kwargs": arch_kwargs or {}, "metadata": metadata or {}}
    json.dumps(info)  # fail here, not at load time, on values a weights-only file cannot hold
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {"format": FORMAT, "info": json.dumps(info)}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=header))
    else:
        atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "info": json.dumps(info), "state_dict": state},
                                                   tmp))
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, info)`` from a model file; ``info`` is empty for a bare state dict."""
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
            return state, _checked_info(header["info"], path) if "info" in header else {}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file raises many exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read model file {path}: corrupt or not a weights file ({reason})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _checked_state(obj.get("state_dict"), path), _checked_info(obj.get("info"), path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # the common {"state_dict": ...} training-script layout
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"model file {path} holds no state dict of tensors (found {type(obj).__name__})")


def _checked_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """A hypercert file's ``state_dict``, checked to be a non-empty dict of named tensors."""
    if not isinstance(state, dict) or not state:
        raise ValueError(f"damaged model file {path}: its state_dict is {type(state).__name__}, not a dict of tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"damaged model file {path}: state_dict entry {k!r} is {type(v).__name__}, not a tensor")
    return state


def _checked_info(raw: Any, path: Path) -> dict[str, Any]:
    """A hypercert file's ``info`` (JSON text), checked to hold what :func:`save_model` writes."""
    try:
        info = json.loads(raw)
    except (TypeError, ValueError):
        raise ValueError(f"damaged model file {path}: its info field is not JSON text") from None
    if not isinstance(info, dict):
        raise ValueError(f"damaged model file {path}: its info is {type(info).__name__}, not a JSON object")
    for key, kinds, what in (("arch", (str, type(None)), "a string"), ("arch_kwargs", (dict, type(None)), "an object"),
                             ("metadata", (dict, type(None)), "an object")):
        if not isinstance(info.get(key), kinds):
            raise ValueError(f"damaged model file {path}: info.{key} is {type(info[key]).__name__}, not {what}")
    return info


def load_model(
    path: str | Path,
    arch: str | None = None,
    *,
    device: str | torch.device = "cpu",
    **arch_kwargs: Any,
) -> nn.Module:
    """Rebuild the model in ``path`` (eval mode, on ``device``); no code from the file ever runs.

    ``arch`` (a registered name or ``module:function``) and ``arch_kwargs`` override what the file
    records; a bare state dict needs them. A ``module:function`` factory is imported and called only
    when the caller names it: a file that records one is refused unless ``arch`` names the same
    factory, since otherwise the file would choose code to run. A missing/unexpected parameter, a
    shape mismatch or a tensor of the wrong kind (integer or complex weights for floating-point
    parameters) is a ``ValueError`` naming the file and the first offending keys.
    """
    path = Path(path)
    state, info = _read(path)
    name = arch or info.get("arch")
    if not name:
        raise ValueError(f"{path} does not record its architecture: pass arch= (--arch), e.g. one of "
                         f"{', '.join(MODELS)} or 'module:function'")
    if not arch and name not in MODELS:
        raise ValueError(f"{path} records the architecture {name!r}, which is not a registered name; a model file "
                         f"never chooses code to run: pass arch={name!r} (--arch) yourself if you trust it")
    kwargs = {**(info.get("arch_kwargs") or {}), **arch_kwargs} if not arch or arch == info.get("arch") else arch_kwargs
    try:
        model = resolve_factory(name)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build architecture {name!r} with {kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {name!r} returned {type(model).__name__}, not an nn.Module")
    _load_state(model, state, path, name)
    return model.to(device).eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ValueError(f"{path} does not fit architecture {name!r}: {'; '.join(parts)}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{path} does not fit architecture {name!r}: {k} has shape {tuple(state[k].shape)} "
                             f"in the file, {tuple(v.shape)} in the model")
        if (state[k].is_floating_point(), state[k].is_complex()) != (v.is_floating_point(), v.is_complex()):
            raise ValueError(f"{path} does not fit architecture {name!r}: {k} has dtype {state[k].dtype} in the "
                             f"file, {v.dtype} in the model")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise ValueError(f"{path}: parameter {k} contains NaN or infinite values")
    model.load_state_dict(state)
