"""Fitted components as JSON plus plain arrays: the only way a head is saved. Never pickle.

A component (a head, a feature step, a calibrator, a pipeline, a stacked model) is
persistable when its class has

* `persist_kind`: a name in the whitelist `KINDS` (see `register`); the loader imports
  nothing else, so data cannot name code to run;
* `to_state() -> (config, parts)`: `config` is JSON (dicts, lists, str, int, float, bool,
  None); `parts` maps a name (letters, digits, `_`) to one of
    - a numpy array of numbers or bools (any shape; saved bit-exact),
    - a `list[str]` (a vocabulary; saved as utf-8 bytes + int64 offsets, not as objects),
    - another persistable component, or a list of components (nesting: a pipeline's
      steps, a stack's base models and meta-model, one calibrator per class);
* `from_state(config, parts)` (a classmethod) that rebuilds it from the same shapes:
  arrays come back as read-only numpy arrays, string lists as `list[str]`, components
  as loaded components.

The class that trains may differ from the class that serves: `LogisticHead.to_state()`
emits the state of `classifier.dense.DenseClassifier` and declares that kind, so a loaded
head predicts with numpy alone. A serving class's module must not import torch or
scikit-learn at import time (the API loads heads without them; a test checks it).

Example, a Platt calibrator per class of some base model:

    class PlattCalibrated:
        persist_kind = "platt_calibrated"   # and a line in BUILTIN_KINDS below

        def to_state(self):
            return {"classes": len(self.slopes_)}, {
                "base": self.base_, "slopes": self.slopes_, "offsets": self.offsets_}

        @classmethod
        def from_state(cls, config, parts):
            model = cls.__new__(cls)
            model.base_, model.slopes_, model.offsets_ = (
                parts["base"], parts["slopes"], parts["offsets"])
            return model

The root of a head (what `classifier.headfile.encode_head` saves) also follows the
serving convention of classifier.loaded.LoadedHead: `inputs_` lists what it reads,
("vectors",) by default, ("texts",) for a lexical-only model, ("vectors", "texts") for a
hybrid; `predict_proba(X)` gets the vectors, and a model that reads texts is called as
`predict_proba(X, texts=texts)` (X is None when it reads no vectors). Columns follow the
head's labels, float32.

`dump(component)` gives `(tree, arrays)`: the tree is JSON naming each part's kind and
array keys; `classifier.headfile` writes both into one safetensors artifact. `load(tree,
arrays)` reverses it and refuses unknown kinds, missing arrays and malformed trees.
"""

import importlib
import itertools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from classifier.errors import CorruptHeadError, PersistError

# kind -> "module:Class". Add a line here for every new serving component, so a fresh
# process can load it without importing the training code first.
BUILTIN_KINDS: dict[str, str] = {
    "dense_classifier": "classifier.dense:DenseClassifier",
    "calibrator": "classifier.calibration:Calibrator",
    "calibrated_classifier": "classifier.calibration:CalibratedClassifier",
    "stacked_classifier": "classifier.stacking:StackedClassifier",
    "linear_text_model": "classifier.features.linear:LinearTextModel",
    "tfidf_transform": "classifier.features.tfidf:TfidfTransform",
}
KINDS: dict[str, str] = dict(BUILTIN_KINDS)
PART_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
MAX_DEPTH = 32
# Numbers and bools only: safetensors stores these bit-exact, and none of them is code.
ARRAY_KINDS = frozenset("biuf")


def register(kind: str, target: type | str) -> None:
    """Whitelist `kind` -> a class (or "module:Class", imported only when a head needs it)."""
    if not PART_NAME.match(kind):
        raise PersistError(f"kind: {kind!r} must be 1-64 letters, digits or '_'")
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    known = KINDS.get(kind)
    if known is not None and known != target:
        raise PersistError(f"kind {kind!r} is already registered to {known}")
    KINDS[kind] = target


def _resolve(kind: str) -> Any:
    target = KINDS.get(kind)
    if target is None:
        raise CorruptHeadError(
            f"unknown component kind {kind!r} (saved by a newer bertheads?); "
            f"known kinds: {sorted(KINDS)}"
        )
    module_name, _, qualname = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for attribute in qualname.split("."):
        found = getattr(found, attribute)
    return found


def json_ready(value: Any) -> Any:
    """`value` with numpy scalars and tuples turned into JSON types; anything else refused."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise PersistError(f"config: {type(value).__name__} is not JSON; put arrays in parts")


def _kind_of(component: Any) -> str:
    kind = getattr(component, "persist_kind", None)
    if not isinstance(kind, str) or not hasattr(component, "to_state"):
        raise PersistError(
            f"{type(component).__name__} is not persistable: give it `persist_kind`, "
            "`to_state()` and `from_state()` (see classifier.persist)"
        )
    if kind not in KINDS:
        raise PersistError(
            f"kind {kind!r} of {type(component).__name__} is not registered; "
            "add it to classifier.persist.BUILTIN_KINDS"
        )
    return kind


def _is_component(value: Any) -> bool:
    return hasattr(value, "persist_kind") and hasattr(value, "to_state")


def dump(component: Any, prefix: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Turn a component into (tree JSON, arrays by key); keys start with `prefix`."""
    arrays: dict[str, np.ndarray] = {}
    tree = _dump(component, prefix, arrays, 0)
    return tree, arrays


def _dump(component: Any, path: str, arrays: dict[str, np.ndarray], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise PersistError(f"{path}: components nested deeper than {MAX_DEPTH}")
    kind = _kind_of(component)
    config, parts = component.to_state()
    nodes: dict[str, Any] = {}
    for name, value in parts.items():
        if not PART_NAME.match(str(name)):
            raise PersistError(f"{path}: part name {name!r} must be 1-64 letters, digits or '_'")
        key = f"{path}/{name}"
        nodes[name] = _dump_part(value, key, arrays, depth)
    return {"kind": kind, "config": json_ready(config), "parts": nodes}


def _dump_part(value: Any, key: str, arrays: dict[str, np.ndarray], depth: int) -> dict[str, Any]:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in ARRAY_KINDS:
            raise PersistError(
                f"{key}: dtype {value.dtype} cannot be saved; numbers and bools only "
                "(give strings as list[str])"
            )
        arrays[key] = np.ascontiguousarray(value)
        return {"array": key}
    if _is_component(value):
        return {"component": _dump(value, key, arrays, depth + 1)}
    if isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            encoded = [item.encode("utf-8", "surrogatepass") for item in value]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(item) for item in encoded], out=offsets[1:])
            arrays[f"{key}.bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
            arrays[f"{key}.offsets"] = offsets
            return {"strings": [f"{key}.bytes", f"{key}.offsets"]}
        if all(_is_component(item) for item in value):
            return {
                "components": [
                    _dump(item, f"{key}/{index}", arrays, depth + 1)
                    for index, item in enumerate(value)
                ]
            }
    raise PersistError(
        f"{key}: {type(value).__name__} is not an array, a list of str, a component "
        "or a list of components"
    )


def load(tree: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild a component from `dump`'s output; malformed input raises CorruptHeadError."""
    return _load(tree, arrays, 0)


def _load(node: Any, arrays: Mapping[str, np.ndarray], depth: int) -> Any:
    if depth > MAX_DEPTH or not isinstance(node, dict):
        raise CorruptHeadError("model tree: malformed (not an object, or nested too deep)")
    kind, config, parts = node.get("kind"), node.get("config"), node.get("parts")
    if not isinstance(kind, str) or not isinstance(parts, dict):
        raise CorruptHeadError("model tree: a node lacks 'kind' or 'parts'")
    builder: Callable[..., Any] = _resolve(kind).from_state
    loaded = {name: _load_part(part, arrays, depth) for name, part in parts.items()}
    try:
        return builder(config, loaded)
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise CorruptHeadError(f"model tree: cannot rebuild a {kind!r} ({error!r})") from None


def _array(arrays: Mapping[str, np.ndarray], key: Any) -> np.ndarray:
    if not isinstance(key, str) or key not in arrays:
        raise CorruptHeadError(f"model tree: array {key!r} is missing from the artifact")
    return arrays[key]


def _load_part(part: Any, arrays: Mapping[str, np.ndarray], depth: int) -> Any:
    if not isinstance(part, dict) or len(part) != 1:
        raise CorruptHeadError("model tree: a part must be one of array/strings/component(s)")
    ((form, value),) = part.items()
    if form == "array":
        array = _array(arrays, value)
        array.flags.writeable = False
        return array
    if form == "strings" and isinstance(value, list) and len(value) == 2:
        return _strings(_array(arrays, value[0]), _array(arrays, value[1]))
    if form == "component":
        return _load(value, arrays, depth + 1)
    if form == "components" and isinstance(value, list):
        return [_load(item, arrays, depth + 1) for item in value]
    raise CorruptHeadError(f"model tree: unknown part form {form!r}")


def _strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    if data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.ndim != 1:
        raise CorruptHeadError("model tree: a string list needs uint8 bytes and int64 offsets")
    if (
        len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(data)
        or np.any(np.diff(offsets) < 0)
    ):
        raise CorruptHeadError("model tree: string offsets are out of order or out of range")
    raw = data.tobytes()
    bounds = offsets.tolist()
    try:
        return [
            raw[start:end].decode("utf-8", "surrogatepass")
            for start, end in itertools.pairwise(bounds)
        ]
    except UnicodeDecodeError:
        raise CorruptHeadError("model tree: a string list is not valid utf-8") from None


def tree_json(tree: Mapping[str, Any]) -> str:
    """The tree as compact JSON (what the artifact header stores)."""
    return json.dumps(tree, separators=(",", ":"))
