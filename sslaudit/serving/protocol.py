"""Open Inference Protocol v2 tensors over REST: JSON ``data`` and the binary tensor extension.

Pure functions shared by the server and :class:`~sslaudit.remote.RemoteAPI`; no HTTP here. A request
body is a JSON header, optionally followed by raw little-endian row-major tensor bytes whose header
length is the ``Inference-Header-Content-Length`` HTTP header (Triton's ``binary_tensor_data``
extension, which KServe and MLServer also accept). Malformed input raises :class:`ProtocolError` with
the HTTP status to answer and a message that says what to send.

>>> body, length = encode_infer_request({"images": torch.zeros(2, 1, 4, 4)}, binary=True, request_id="r1")
>>> req = decode_infer_request(body, length)
>>> req.id, tuple(req.inputs["images"].shape), req.binary_output
('r1', (2, 1, 4, 4), True)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

HEADER_LENGTH = "Inference-Header-Content-Length"
BUDGET_EXHAUSTED, REFUSED = "budget_exhausted", "refused"  # the error body's "code" beside "error"
MAX_ID = 128  # request ids are stored with the answer they paid for: bounded
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1"),
          "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}


class ProtocolError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message goes in ``{"error": ...}``;
    ``code`` (``BUDGET_EXHAUSTED``, ``REFUSED``) tells a client two 403s apart without reading the message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class InferRequest:
    """A decoded infer request: its ``id`` (None if absent), input tensors by name, and whether the
    client asked for binary outputs (``binary_data_output``, or ``binary_data`` on a requested output)."""

    id: str | None
    inputs: dict[str, torch.Tensor]
    binary_output: bool


def _json(raw: bytes) -> dict:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(400, f"the request body is not JSON ({err.msg if hasattr(err, 'msg') else err}); "
                                 "send an Open Inference Protocol v2 infer request") from err
    if not isinstance(doc, dict):
        raise ProtocolError(400, "the request body must be a JSON object with an \"inputs\" list")
    return doc


def _shape(spec: dict, name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(400, f"input {name!r}: \"shape\" must be a list of non-negative ints; got {shape!r}")
    return tuple(shape)


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an infer request body (``header_length``: the JSON part's size when binary tensors follow)."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise ProtocolError(400, f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    head, blob = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    doc = _json(head)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "the request needs a non-empty \"inputs\" list of tensors")
    tensors, offset = {}, 0
    for spec in inputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(400, "every input needs a string \"name\"")
        shape, datatype = _shape(spec, name), spec.get("datatype")
        if datatype not in DTYPES:
            raise ProtocolError(400, f"input {name!r}: datatype {datatype!r} is not supported; send FP32")
        dtype, count = DTYPES[datatype], math.prod(shape)
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(blob):
                raise ProtocolError(400, f"input {name!r}: binary_data_size {size!r} does not match shape {list(shape)}"
                                         f" of {datatype} or the bytes sent")
            array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            offset += size
        else:
            try:
                array = np.asarray(spec.get("data"), dtype=dtype).reshape(-1)
            except (TypeError, ValueError) as err:
                raise ProtocolError(400, f"input {name!r}: \"data\" must be a flat or nested list of numbers") from err
            if array.size != count:
                raise ProtocolError(400, f"input {name!r}: {array.size} values for shape {list(shape)}")
        tensors[name] = torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True)).view(shape)
    if offset != len(blob):
        raise ProtocolError(400, f"{len(blob) - offset} bytes after the tensors that no binary_data_size accounts for")
    outputs = doc.get("outputs") or []
    binary = bool((doc.get("parameters") or {}).get("binary_data_output")) or any(
        isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs)
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID):
        raise ProtocolError(400, f"\"id\" must be a string of 1 to {MAX_ID} characters")
    return InferRequest(request_id, tensors, binary)


def encode_tensors(tensors: dict[str, torch.Tensor], *, binary: bool, extra: dict | None = None,
                   key: str = "inputs") -> tuple[bytes, int | None]:
    """A body carrying FP32 ``tensors`` under ``key`` (JSON data, or binary after the header), and the
    header length to send as ``Inference-Header-Content-Length`` (None for pure JSON)."""
    entries, blobs = [], []
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().float().contiguous().numpy().astype("<f4", copy=False)
        entry = {"name": name, "shape": list(array.shape), "datatype": "FP32"}
        if binary:
            blobs.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    head = json.dumps({**(extra or {}), key: entries}).encode()
    return (head + b"".join(blobs), len(head)) if binary else (head, None)


def encode_infer_request(tensors: dict[str, torch.Tensor], *, binary: bool, request_id: str | None = None,
                         ) -> tuple[bytes, int | None]:
    """An infer request for ``tensors``; with ``binary`` the inputs and the outputs travel as raw bytes."""
    extra = {"id": request_id} if request_id is not None else {}
    if binary:
        extra["parameters"] = {"binary_data_output": True}
    return encode_tensors(tensors, binary=binary, extra=extra)


def decode_infer_response(body: bytes, header_length: int | None = None) -> dict[str, torch.Tensor]:
    """The output tensors of an infer response (JSON or binary), by name."""
    head, blob = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    doc, out, offset = _json(head), {}, 0
    for spec in doc.get("outputs") or []:
        dtype, shape = DTYPES.get(spec.get("datatype"), np.dtype("<f4")), tuple(spec["shape"])
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
            offset += size
        else:
            array = np.asarray(spec["data"], dtype=dtype)
        out[spec["name"]] = torch.from_numpy(array.astype(np.float32)).view(shape)
    return out
