"""Defence state to bytes and back, with no pickle: JSON for the structure, safetensors for the tensors.

A defence's per-account state (B4B's bucket table, a detector's memory and noise generator) is a tree of
dataclasses, dicts, lists, numbers, strings, tensors and ``torch.Generator``s. :func:`encode` writes
that tree as JSON with tensors replaced by references into one safetensors blob; :func:`restore` reads
it back *onto a fresh state from the defence's own factory*, so the class of every dataclass comes
from the code, never from the stored bytes.

>>> from dataclasses import dataclass, field
>>> @dataclass
... class S:
...     n: int = 0
...     seen: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.bool))
>>> text, blob = encode(S(2, torch.tensor([True, False, True])))
>>> restore(S(), text, blob)
S(n=2, seen=tensor([ True, False,  True]))
"""
from __future__ import annotations

import dataclasses
import json

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors


def encode(state: object) -> tuple[str, bytes]:
    """``state`` as (JSON text, safetensors bytes)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: object) -> object:
        if isinstance(obj, torch.Tensor):
            tensors[f"t{len(tensors)}"] = obj.detach().cpu().contiguous()
            return {"__tensor__": f"t{len(tensors) - 1}"}
        if isinstance(obj, torch.Generator):
            tensors[f"t{len(tensors)}"] = obj.get_state()
            return {"__generator__": f"t{len(tensors) - 1}"}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {"__fields__": {f.name: walk(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
        if isinstance(obj, dict):
            return {"__items__": [[walk(k), walk(v)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"__list__": [walk(v) for v in obj], "tuple": isinstance(obj, tuple)}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store defence state of type {type(obj).__name__}")

    return json.dumps(walk(state)), save_tensors(tensors)


def restore(template: object, text: str, blob: bytes) -> object:
    """The state stored as (``text``, ``blob``), rebuilt on ``template`` (a fresh state of the same kind)."""
    tensors = load_tensors(blob) if blob else {}

    def build(data: object, like: object) -> object:
        if isinstance(data, dict) and "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if isinstance(data, dict) and "__generator__" in data:
            gen = like if isinstance(like, torch.Generator) else torch.Generator()
            gen.set_state(tensors[data["__generator__"]])
            return gen
        if isinstance(data, dict) and "__fields__" in data:
            if not (dataclasses.is_dataclass(like) and not isinstance(like, type)):
                raise ValueError("stored defence state does not match this defence's state (upgrade or reset)")
            names = {f.name for f in dataclasses.fields(like)}
            for name, value in data["__fields__"].items():
                if name in names:
                    setattr(like, name, build(value, getattr(like, name)))
            return like
        if isinstance(data, dict) and "__items__" in data:
            return {_key(build(k, None)): build(v, None) for k, v in data["__items__"]}
        if isinstance(data, dict) and "__list__" in data:
            items = [build(v, None) for v in data["__list__"]]
            return tuple(items) if data.get("tuple") else items
        return data

    return build(json.loads(text), template)


def _key(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value
