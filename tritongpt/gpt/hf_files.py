"""What a Hugging Face model directory holds, read without building or loading the model:
config.json as a dict, the name and shape of every tensor in its weight files (from the
safetensors headers, or a memory-mapped pytorch_model.bin), and the memory this process may still
take. gpt.hf checks a directory with these before it allocates anything, so that a config.json that
does not describe its weights (a wrong model_type fills in another family's defaults, which may be
a 20-billion-parameter model) is refused in one line instead of exhausting the machine.

Every problem is a ValueError whose message names the file.
"""

import json
import os
import re
import resource
import struct

import torch

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_MAX_HEADER = 100 << 20  # bytes: the safetensors format's own bound on a header
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def read_config_json(directory):
    """config.json of `directory` as a dict; a ValueError naming the file when it is unreadable,
    not JSON, or not a JSON object."""
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise ValueError(f"{directory}: no {CONFIG}, so not a Hugging Face model directory")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({reason(e)}); write the model's config there again") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "write the model's config there again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the object of a model's config; "
                         "write the model's config there again")
    return config


def weight_files(directory):
    """The weight files of `directory`: model.safetensors, the shards its index names, or
    pytorch_model.bin (and its shards); a ValueError when there is none or the index is broken."""
    for index, single in ((SAFETENSORS_INDEX, SAFETENSORS), (PICKLE_INDEX, PICKLE)):
        if os.path.isfile(os.path.join(directory, single)):
            return [os.path.join(directory, single)]
        if os.path.isfile(os.path.join(directory, index)):
            return _shards(directory, index)
    raise ValueError(f"{directory}: no weights file ({SAFETENSORS} or {PICKLE}); save the model there again "
                     "(model.save_pretrained(DIR))")


def _shards(directory, index):
    path = os.path.join(directory, index)
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a weights index ({reason(e)}); save the model there again") from None
    files = [os.path.join(directory, name) for name in names]
    missing = [name for name, file in zip(names, files, strict=True) if not os.path.isfile(file)]
    if missing or any(os.path.basename(name) != name for name in names):
        raise ValueError(f"{path} names shards that are not in {directory} ({(missing or names)[0]}); "
                         "save the model there again")
    return files


def tensor_shapes(files):
    """{name: shape} of every tensor in the weight files, and their bytes of tensor data; read from
    the safetensors headers (a file shorter than its header says is refused as truncated), or
    from a memory-mapped pytorch_model.bin. A ValueError names a damaged file."""
    shapes, nbytes = {}, 0
    for file in files:
        found, size = _safetensors_header(file) if file.endswith(".safetensors") else _pickle_shapes(file)
        shapes.update(found)
        nbytes += size
    return shapes, nbytes


def _safetensors_header(path):
    size = os.path.getsize(path)
    damaged = f"{path} is damaged or truncated ({size} bytes"
    again = "; save or download the model there again"
    if size < 8:
        raise ValueError(f"{damaged}: too short for a safetensors header){again}")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{damaged}, its header says {length}){again}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        shapes, end = {}, 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape, (begin, stop) = [int(d) for d in entry["shape"]], entry["data_offsets"]
            count = 1
            for d in shape:
                count *= d
            if min(shape, default=0) < 0 or not 0 <= begin <= stop or stop - begin != count * _ITEMSIZE[entry["dtype"]]:
                raise ValueError(f"{name}: inconsistent entry")
            shapes[name] = tuple(shape)
            end = max(end, stop)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{damaged}: its header does not read ({reason(e)})){again}") from None
    if 8 + length + end > size:
        raise ValueError(f"{path} is truncated: its header lists {8 + length + end} bytes, the file holds {size}{again}")
    return shapes, end


def _pickle_shapes(path):
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # no tensor is read
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        nbytes = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad pickle, an I/O error: all mean "unreadable"
        raise ValueError(f"{path} is unreadable ({reason(e)}); save or download the model there again") from None
    return shapes, nbytes


# ----------------------------------------------------------------------------- free memory


def _meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/meminfo")


def _vm_size():
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmSize:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _read_int(path):
    with open(path) as f:
        text = f.read().strip()
    return None if text == "max" else int(text)


def _stat(path, key):
    with open(path) as f:
        for line in f:
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def free_memory():
    """(bytes this process may still allocate, what limits it): the least of the machine's
    available memory, the cgroup's limit less its usage, and the address-space limit (ulimit -v)
    less this process's size. (None, None) where none of them can be read (not Linux)."""
    limits = []
    try:
        limits.append((_meminfo("MemAvailable"), "available memory"))
    except (OSError, ValueError):
        pass
    for where, limit, usage, cache in (("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),  # v2
                                       ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                                        "total_inactive_file")):  # v1
        try:
            cap = _read_int(os.path.join(where, limit))
            if cap is not None and cap < 1 << 60:  # usage counts file pages the kernel would drop to make room
                used = _read_int(os.path.join(where, usage)) - _stat(os.path.join(where, "memory.stat"), cache)
                limits.append((cap - used, "the cgroup's memory limit"))
                break
        except (OSError, ValueError, TypeError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            limits.append((soft - _vm_size(), "the address-space limit (ulimit -v)"))
        except (OSError, AttributeError):
            pass
    if not limits:
        return None, None
    return min(limits)


def reason(e):
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
