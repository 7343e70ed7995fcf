"""Read and write safetensors files with torch only (no `safetensors` package needed).

File layout:
    8 bytes   little-endian u64 N, the header length in bytes
    N bytes   UTF-8 JSON header, padded with spaces to a multiple of 8:
              {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
               "data_offsets": [begin, end]}, ...}
    rest      raw little-endian tensor data; offsets are relative to the end of the header

The writer orders tensors by element size (largest first), then by name, so every tensor
starts at an offset that is a multiple of its element size. Readers must not rely on
that: other writers do not promise it.
"""

import json
import struct

import torch

# safetensors dtype name -> (torch dtype, element size in bytes)
DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_NAME_OF_DTYPE = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}

# Same-size integer type for 16-bit floats, because numpy has no bfloat16 to convert to.
_BITS_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16}


def tensor_to_bytes(tensor):
    """Return the raw little-endian bytes of a CPU tensor in row-major order."""
    tensor = tensor.detach().cpu().contiguous()
    view_dtype = _BITS_VIEW.get(tensor.dtype)
    if view_dtype is not None:
        tensor = tensor.view(view_dtype)
    return tensor.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Write `tensors` (name -> torch.Tensor) and string `metadata` to `path`."""
    metadata = {str(key): str(value) for key, value in (metadata or {}).items()}
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAME_OF_DTYPE:
            raise ValueError(f"tensor {name!r}: unsupported dtype {tensor.dtype}")

    def write_order(name):
        element_size = DTYPES[_NAME_OF_DTYPE[tensors[name].dtype]][1]
        return (-element_size, name)

    header = {"__metadata__": metadata} if metadata else {}
    blobs = []
    offset = 0
    for name in sorted(tensors, key=write_order):
        tensor = tensors[name]
        blob = tensor_to_bytes(tensor)
        header[name] = {
            "dtype": _NAME_OF_DTYPE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)

    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for blob in blobs:
            file.write(blob)


def read_safetensors(path):
    """Read `path` and return (tensors: name -> torch.Tensor, metadata: dict of str).

    Raises ValueError naming the file and tensor when the header is inconsistent with the
    data (unknown dtype, size mismatch, offsets outside the data section).
    """
    with open(path, "rb") as file:
        content = file.read()
    if len(content) < 8:
        raise ValueError(f"{path}: file is {len(content)} bytes, shorter than the 8-byte header length")
    (header_length,) = struct.unpack("<Q", content[:8])
    if 8 + header_length > len(content):
        raise ValueError(f"{path}: header length {header_length} exceeds the file size {len(content)}")
    header = json.loads(content[8 : 8 + header_length].decode("utf-8"))
    data = content[8 + header_length :]

    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, entry in header.items():
        dtype_name = entry["dtype"]
        if dtype_name not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        torch_dtype, element_size = DTYPES[dtype_name]
        shape = [int(dim) for dim in entry["shape"]]
        begin, end = entry["data_offsets"]
        count = 1
        for dim in shape:
            count *= dim
        if end - begin != count * element_size or end > len(data) or begin > end:
            raise ValueError(
                f"{path}: tensor {name!r} offsets [{begin}, {end}) do not match shape {shape} "
                f"of {dtype_name} within {len(data)} data bytes"
            )
        raw = bytearray(data[begin:end])
        load_dtype = _BITS_VIEW.get(torch_dtype, torch_dtype)
        if count == 0:
            flat = torch.empty(0, dtype=load_dtype)
        else:
            flat = torch.frombuffer(raw, dtype=load_dtype)
        tensors[name] = flat.view(torch_dtype).reshape(shape).clone()
    return tensors, metadata
