"""Model files: a cybn model's arrays in the safetensors format with its architecture as JSON
metadata; no pickle, so loading a file from anywhere runs no code from it.

A file holds every parameter and buffer under its ``state_dict`` key (the tensors a PyTorch
module with the same structure loads with ``load_state_dict``) and, in the metadata:

* ``format``: ``"cybn.model"``, ``format_version``: an integer (:data:`FORMAT_VERSION`;
  a newer file is refused with a message saying so), ``cybn_version``;
* ``architecture``: a JSON tree, one node per module: its class (a cybn layer class, looked
  up in a fixed table: nothing else can be named), its settings (numbers, strings, tuples,
  dtypes, a random generator's state), its parameters' and buffers' keys, and its children
  in order.

The settings are the layer's attributes, so a loaded model is the saved one: fused
activations, frozen layers, half-precision settings, the mode (training or eval) and the
running statistics all come back, every array bit for bit. What a forward keeps for its
backward is not saved. A :class:`~cybn.distributed.SyncBatchNorm` loads as a SyncBatchNorm
over ``MPI.COMM_WORLD`` where mpi4py is installed, else as a plain :class:`cybn.BatchNorm`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import tempfile

import numpy as np

from . import __version__, nn
from .nn.module import Module, Parameter

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT = "cybn.model"
FORMAT_VERSION = 1
# a forward's record for its backward, scratch arrays, and a block's composition of its
# children (Fire, ShuffleUnit: rebuilt from them): never saved
_TRANSIENT = ("_cache", "_workspaces", "_composed")
_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _safetensors():
    try:
        import safetensors.numpy as st
    except ImportError:  # pragma: no cover - the message is the point
        raise ImportError("cybn.save and cybn.load need the safetensors package: pip install "
                          "safetensors (or cybn[io])") from None
    return st


def _classes() -> dict:
    """Every module class a file may name: cybn's layers, by name."""
    from .distributed import SyncBatchNorm

    table = {}
    stack = [Module]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("cybn.") and not cls.__name__.startswith("_"):
            table[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    table["SyncBatchNorm"] = SyncBatchNorm
    return table


def _dataclasses() -> dict:
    from .ops.variants import RenormSchedule

    return {"RenormSchedule": RenormSchedule}


# ----------------------------------------------------------------------------- writing
def _encode(value, where: str):
    """A setting as JSON (tagged objects for what JSON lacks); TypeError naming ``where``
    for anything that is not data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return {"__scalar__": str(value.dtype), "value": value.item()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, where), _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, np.dtype):
        return {"__dtype__": value.name}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.ndarray):
        data = np.array(value, order="C", copy=True)
        return {"__array__": data.dtype.name, "shape": list(data.shape),
                "data": base64.b64encode(data.tobytes()).decode("ascii")}
    if isinstance(value, np.random.Generator):
        state = value.bit_generator.state
        if state.get("bit_generator") not in _GENERATORS:
            raise TypeError(f"cybn.save: {where} is a generator over "
                            f"{state.get('bit_generator')!r}, which cannot be saved")
        return {"__generator__": _encode(state, where)}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _dataclasses():
        return {"__object__": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), where)
                           for f in dataclasses.fields(value)}}
    raise TypeError(f"cybn.save: {where} is a {type(value).__name__}, which a model file "
                    f"cannot hold (settings must be numbers, strings, tuples or dtypes)")


def _describe(module: Module, prefix: str, classes: dict) -> dict:
    """The architecture node of ``module`` (its keys under ``prefix``)."""
    name = type(module).__name__
    where = prefix.rstrip(".") or "the model"
    if classes.get(name) is not type(module):
        raise TypeError(f"cybn.save: {where} is a {type(module).__module__}.{name}, not a cybn "
                        f"layer: a model file can only name cybn's layer classes")
    settings = {}
    for key, value in module.__dict__.items():
        if key in ("_parameters", "_buffers", "_modules") or key in _TRANSIENT:
            continue
        if name == "SyncBatchNorm" and key == "comm":
            continue  # a connection, not a setting: reconnected (or dropped) on load
        settings[key] = _encode(value, f"{where}.{key}")
    params = {k: (None if p is None else {"decay": bool(p.decay),
                                         "requires_grad": bool(p.requires_grad)})
              for k, p in module._parameters.items()}
    return {"class": name, "settings": settings, "parameters": params,
            "buffers": [[k, b is not None] for k, b in module._buffers.items()],
            "modules": [[k, _describe(m, f"{prefix}{k}.", classes)]
                        for k, m in module._modules.items()]}


def save(model, path) -> None:
    """Write ``model`` to ``path`` (a safetensors file; ``.safetensors`` is the usual suffix).

    The arrays are stored under their ``state_dict`` keys and the architecture as JSON
    metadata (see :mod:`cybn.model_file`); the file is written to a temporary name first
    and moved into place, so ``path`` never holds half a file.

    Raises
    ------
    TypeError
        ``model`` is not a cybn Module, or holds a layer class defined outside cybn, or a
        setting a file cannot hold (named).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a cybn Module, got {type(model).__name__}")
    st = _safetensors()
    architecture = _describe(model, "", _classes())
    # (np.ascontiguousarray would make 0-d counters 1-d)
    tensors = {k: np.array(v, order="C", copy=True) for k, v in model._state_items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "cybn_version": __version__, "architecture": json.dumps(architecture)}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cybn-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- reading
class _Reader:
    def __init__(self, path: str, tensors: dict):
        self.path = path
        self.tensors = tensors
        self.used: set = set()
        self.classes = _classes()

    def bad(self, why: str) -> ValueError:
        return ValueError(f"cybn.load: {self.path} is not a valid cybn model file: {why}")

    def decode(self, value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            raise self.bad(f"unreadable setting {value!r}")
        tag = next(iter(value))
        if tag == "__tuple__":
            return tuple(self.decode(v) for v in value[tag])
        if tag == "__dict__":
            return {self.decode(k): self.decode(v) for k, v in value[tag]}
        if tag == "__scalar__":
            return self.dtype(value[tag]).type(value["value"])
        if tag == "__dtype__":
            return self.dtype(value[tag])
        if tag == "__array__":
            raw = base64.b64decode(value["data"].encode("ascii"), validate=True)
            return np.frombuffer(raw, dtype=self.dtype(value[tag])).reshape(
                value["shape"]).copy()
        if tag == "__generator__":
            state = self.decode(value[tag])
            kind = state.get("bit_generator") if isinstance(state, dict) else None
            if kind not in _GENERATORS:
                raise self.bad(f"unknown random generator {kind!r}")
            gen = np.random.Generator(getattr(np.random, kind)())
            gen.bit_generator.state = state
            return gen
        if tag == "__object__":
            cls = _dataclasses().get(value[tag])
            if cls is None:
                raise self.bad(f"unknown setting object {value[tag]!r}")
            return cls(**{k: self.decode(v) for k, v in value["fields"].items()})
        raise self.bad(f"unknown setting tag {tag!r}")

    @staticmethod
    def dtype(name: str) -> np.dtype:
        if name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name)

    def tensor(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise self.bad(f"the architecture names the array {key!r}, which the file lacks")
        self.used.add(key)
        return self.tensors[key]

    def build(self, node: dict, prefix: str) -> Module:
        name = node["class"]
        cls = self.classes.get(name)
        if cls is None:
            raise self.bad(f"unknown layer class {name!r} at {prefix.rstrip('.') or 'the top'}")
        settings = {k: self.decode(v) for k, v in node["settings"].items()}
        if name == "SyncBatchNorm":
            cls, comm = _sync_batchnorm_target()
            if comm is not None:
                settings["comm"] = comm
        module = cls.__new__(cls)
        Module.__init__(module)
        for key, value in settings.items():
            object.__setattr__(module, key, value)
        object.__setattr__(module, "_cache", None)
        for key, flags in node["parameters"].items():
            if flags is None:
                module._parameters[key] = None
                continue
            p = Parameter(self.tensor(prefix + key).copy(), decay=bool(flags["decay"]))
            p.requires_grad = bool(flags["requires_grad"])
            module._parameters[key] = p
        for key, present in node["buffers"]:
            module._buffers[key] = self.tensor(prefix + key).copy() if present else None
        for key, child in node["modules"]:
            module._modules[key] = self.build(child, f"{prefix}{key}.")
        return module


def _sync_batchnorm_target() -> tuple:
    """(class, communicator) a saved SyncBatchNorm loads as."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return nn.BatchNorm, None
    from .distributed import MPIComm, SyncBatchNorm

    return SyncBatchNorm, MPIComm()


def load(path) -> Module:
    """The model saved in ``path`` by :func:`save`.

    Nothing in the file is executed: it names layer classes from a fixed table and holds
    data. A file that is not a cybn model file (another format, a plain safetensors file
    without the architecture, a truncated or corrupt one, a newer format version) raises
    ValueError naming the path and the reason, and nothing is returned half-built.
    """
    st = _safetensors()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cybn.load: no file {path!r}")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
        tensors = st.load_file(path)
    except Exception as err:  # safetensors raises its own error types for bad files
        raise ValueError(f"cybn.load: {path} is not a readable safetensors file "
                         f"({type(err).__name__}: {err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"cybn.load: {path} is a safetensors file without a cybn "
                         f"architecture (load its arrays with safetensors and "
                         f"load_state_dict)")
    reader = _Reader(path, tensors)
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise reader.bad(f"format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"cybn.load: {path} has format version {version}, newer than this "
                         f"cybn reads ({FORMAT_VERSION}, cybn {__version__}): upgrade cybn")
    try:
        tree = json.loads(metadata["architecture"])
        model = reader.build(tree, "")
    except ValueError as err:
        if str(err).startswith("cybn.load"):
            raise
        raise reader.bad(f"its architecture is corrupt ({err})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise reader.bad(f"its architecture is corrupt ({type(err).__name__}: {err})") from None
    extra = sorted(set(tensors) - reader.used)
    if extra:
        raise reader.bad(f"arrays {extra} belong to no layer")
    return model
