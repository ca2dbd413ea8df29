"""Reading and writing modules: ``model.sir`` (text) beside ``model.npz`` (params)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sliver.common.errors import IRParseError, SliverError
from sliver.common.files import atomic_write


#: the largest IR text file ``load_module`` reads (the text of a 100M-parameter model
#: is a few hundred kB: its weights are in the params file)
MAX_TEXT_BYTES = 64 << 20


def params_path(path) -> Path:
    return Path(path).with_suffix(".npz")


def save_module(module, path) -> Path:
    """Write ``path`` (IR text) and its params beside it (same stem, ``.npz``)."""
    atomic_write(params_path(path), lambda f: np.savez(f, **module.params))
    return atomic_write(path, lambda f: f.write(str(module).encode()))


def load_module(path):
    """Read a module saved by :func:`save_module`.

    The IR text is parsed and checked first; then each array of the params file is
    checked against its param's printed type from the ``.npy`` header alone (name,
    shape, element type, size in the zip) before any data is read.  A params file
    whose arrays do not match the text is an :class:`IRParseError` naming the param.
    Without a params file, params are zero placeholders (see ``parse_module``)."""
    from sliver.ir.parser import bind_params, parse_module, parse_structure

    path = Path(path)
    if not path.is_file():
        raise SliverError(f"{path}: no such IR file")
    ppath = params_path(path)
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise IRParseError(f"{path}: {path.stat().st_size} bytes is no IR text (at most {MAX_TEXT_BYTES}; "
                           "the weights belong in the .npz beside it)")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise IRParseError(f"{path}: cannot read the IR text: {e}") from None
    try:
        if not ppath.is_file():
            return parse_module(text)
        module, pending = parse_structure(text)
        bind_params(module, pending, _read_params(ppath, {name: t for name, t, _ in pending}))
        return module
    except SliverError as e:
        raise type(e)(f"{path}: {e}") from None


def _read_params(ppath: Path, types: dict) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` params file, each checked against ``types[name]``
    (a TensorType) from its header before its data is read."""
    import zipfile

    from sliver.ir.types import to_numpy

    def bad(message):
        return IRParseError(f"params file {ppath.name}: {message}")

    try:
        zf = zipfile.ZipFile(ppath)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise bad(f"not a readable .npz file ({e}); save the module again") from None
    out = {}
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise bad("it holds an entry twice")
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name not in types:
                raise bad(f"entry {info.filename!r} is no param of the IR text")
            want = types[name]
            nbytes = want.numel * to_numpy(want.dtype).itemsize
            if info.file_size > nbytes + 4096:
                raise bad(f"entry {info.filename!r} holds {info.file_size} bytes, more than a {want} needs")
            try:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f".npy format version {version} is not one numpy writes for savez")
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                    if dtype != to_numpy(want.dtype) or tuple(shape) != want.shape:
                        raise bad(f"param %{name} is {want} in the IR text but {dtype}{list(shape)} in the params file")
                with zf.open(info) as f:
                    data = np.lib.format.read_array(f, allow_pickle=False)
                    if f.read(1):  # also reaches the end of the entry, where zipfile checks its CRC-32
                        raise ValueError("bytes after the array")
            except IRParseError:
                raise
            except Exception as e:  # zlib, zipfile and numpy raise many types for a damaged entry
                raise bad(f"entry {info.filename!r} is damaged ({type(e).__name__}: {e})") from None
            if data.shape != want.shape or data.dtype != to_numpy(want.dtype):
                raise bad(f"entry {info.filename!r} does not hold the {want} its header announces")
            out[name] = data
    return out
