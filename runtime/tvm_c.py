"""TVM's runtime through its C ABI (``ctypes``), for devices without TVM's Python packages.

A device bundle (``sliver bundle``) carries ``libtvm_runtime.so`` and ``libtvm_ffi.so``
but neither the ``tvm`` nor the ``tvm_ffi`` Python package: those weigh hundreds of MB,
and ``tvm_ffi``'s Cython core is built for one Python version, while this module runs on
any Python 3 with numpy.  It opens the two libraries (``RTLD_GLOBAL``, runtime after FFI,
as TVM's own loader does with ``TVM_USE_RUNTIME_LIB=1``) and speaks the stable C ABI of
``tvm/ffi/c_api.h``: ``TVMFFIFunctionGetGlobal``, ``TVMFFIFunctionCall`` and
``TVMFFIObjectDecRef`` on 16-byte ``TVMFFIAny`` values.

:data:`API` offers the small part of ``tvm``'s Python API that
:mod:`sliver.runtime.artifact` uses (``runtime.vm.VirtualMachine``, ``runtime.tensor``,
``cpu``, ``get_global_func``) so the model object is the same code either way; it is
chosen when ``SLIVER_TVM_LIB_DIR`` names the folder holding the two libraries.
Standard library and numpy only.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

from sliver.common.errors import ArtifactError

#: the environment variable naming the folder with libtvm_ffi.so and libtvm_runtime.so
LIB_DIR_ENV = "SLIVER_TVM_LIB_DIR"
LIBRARIES = ("libtvm_ffi.so", "libtvm_runtime.so")

# TVMFFITypeIndex (c_api.h)
_NONE, _INT, _BOOL, _FLOAT, _OPAQUE_PTR, _DATA_TYPE, _DEVICE, _DLTENSOR_PTR, _RAW_STR = range(9)
_STATIC_OBJECT_BEGIN = 64
_TENSOR, _ARRAY = 70, 71
_OBJECT_HEADER = 24  # TVMFFIObject: u64 ref counts, i32 type index, u32 padding, deleter
_KDLCPU = 1
#: numpy dtype → DLDataType (code, bits); code 0 int, 1 uint, 2 float, 6 bool
_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}
_NP_KINDS = {0: "i", 1: "u", 2: "f", 6: "b"}


class _Any(ctypes.Structure):
    _fields_ = [("type_index", ctypes.c_int32), ("zero_padding", ctypes.c_uint32), ("v", ctypes.c_uint64)]


class _ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _Library:
    """The two shared libraries, opened once per process."""

    def __init__(self, lib_dir: Path):
        paths = [lib_dir / name for name in LIBRARIES]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ArtifactError(f"{LIB_DIR_ENV}={lib_dir}: missing {', '.join(missing)} (a device bundle's lib/ "
                                "folder holds both; make one with `sliver bundle`)")
        if "tvm_ffi" in sys.modules:  # a second copy of the FFI library in one process crashes it
            raise ArtifactError(f"{LIB_DIR_ENV} is set, but TVM's Python packages are already loaded in this "
                                f"process: unset {LIB_DIR_ENV} to use them, or do not import tvm")
        try:
            self.ffi = ctypes.CDLL(str(paths[0]), mode=ctypes.RTLD_GLOBAL)
            self.runtime = ctypes.CDLL(str(paths[1]), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ArtifactError(f"the TVM runtime in {lib_dir} does not load on this machine ({e}): was the bundle "
                                "made for another architecture?") from None
        self.dir = lib_dir
        f = self.ffi
        f.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(_ByteArray), ctypes.POINTER(ctypes.c_void_p)]
        f.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Any), ctypes.c_int32, ctypes.POINTER(_Any)]
        f.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
        f.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        f.TVMFFIErrorMoveFromRaised.restype = None
        self._globals: dict[str, Function] = {}

    def global_function(self, name: str) -> "Function":
        fn = self._globals.get(name)
        if fn is None:
            raw = name.encode()
            handle = ctypes.c_void_p()
            arr = _ByteArray(ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p), len(raw))
            self.check(self.ffi.TVMFFIFunctionGetGlobal(ctypes.byref(arr), ctypes.byref(handle)))
            if not handle.value:
                raise ArtifactError(f"the TVM runtime in {self.dir} has no function {name!r}: not TVM 0.27's runtime?")
            fn = self._globals[name] = Function(self, handle.value)
        return fn

    def check(self, code: int) -> None:
        if code == 0:
            return
        err = ctypes.c_void_p()
        self.ffi.TVMFFIErrorMoveFromRaised(ctypes.byref(err))
        if not err.value:
            raise RuntimeError(f"TVM FFI call failed (code {code})")
        try:
            cell = err.value + _OBJECT_HEADER  # TVMFFIErrorCell: kind, message, backtrace
            kind = _ByteArray.from_address(cell)
            msg = _ByteArray.from_address(cell + ctypes.sizeof(_ByteArray))
            text = f"{ctypes.string_at(kind.data, kind.size).decode(errors='replace')}: " \
                   f"{ctypes.string_at(msg.data, msg.size).decode(errors='replace')}"
        finally:
            self.ffi.TVMFFIObjectDecRef(err)
        raise RuntimeError(text)


class _Object:
    """An owned reference to an FFI object (released when collected)."""

    def __init__(self, lib: _Library, handle: int):
        self._lib, self.handle = lib, handle

    def __del__(self):
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            try:
                self._lib.ffi.TVMFFIObjectDecRef(handle)
            except Exception:  # interpreter shutdown
                pass


class Function(_Object):
    def __call__(self, *args):
        keep = []
        packed = (_Any * max(len(args), 1))()
        for slot, a in zip(packed, args):
            _pack(slot, a, keep)
        result = _Any()
        self._lib.check(self._lib.ffi.TVMFFIFunctionCall(self.handle, packed, len(args), ctypes.byref(result)))
        return _unpack(self._lib, result)


class Module(_Object):
    def __getitem__(self, name: str) -> Function:
        fn = self._lib.global_function("ffi.ModuleGetFunction")(self, name, True)
        if fn is None:
            raise AttributeError(f"the module has no function {name!r}")
        return fn


class Tensor(_Object):
    """A TVM tensor on the CPU; ``numpy()`` copies it out."""

    def _dl(self) -> _DLTensor:
        return _DLTensor.from_address(self.handle + _OBJECT_HEADER)

    def numpy(self) -> np.ndarray:
        dl = self._dl()
        shape = tuple(dl.shape[i] for i in range(dl.ndim))
        if dl.dtype.lanes != 1 or dl.dtype.code not in _NP_KINDS:
            raise ArtifactError(f"the model returned a tensor of DLPack type code {dl.dtype.code}, "
                                f"{dl.dtype.bits} bits × {dl.dtype.lanes}: not a numpy type")
        dtype = np.dtype(f"{_NP_KINDS[dl.dtype.code]}{max(dl.dtype.bits // 8, 1)}")
        if dl.dtype.code == 6:
            dtype = np.dtype(bool)
        if dl.strides:
            want, step = [], dtype.itemsize
            for n in reversed(shape):
                want.insert(0, step // dtype.itemsize)
                step *= n
            if any(dl.strides[i] != want[i] for i in range(dl.ndim) if shape[i] > 1):
                raise ArtifactError("the model returned a strided tensor; expected a compact one")
        out = np.empty(shape, dtype)
        if out.nbytes:
            ctypes.memmove(out.ctypes.data, dl.data + dl.byte_offset, out.nbytes)
        return out


class Array(_Object):
    def __len__(self) -> int:
        return self._lib.global_function("ffi.ArraySize")(self)

    def __iter__(self):
        get = self._lib.global_function("ffi.ArrayGetItem")
        return iter([get(self, i) for i in range(len(self))])


class _Device:
    def __init__(self, device_type: int, index: int):
        self.device_type, self.index = device_type, index


class _DType:
    def __init__(self, dtype: np.dtype):
        if dtype.kind not in _DL_CODES:
            raise ArtifactError(f"dtype {dtype} has no TVM equivalent")
        self.code, self.bits = _DL_CODES[dtype.kind], dtype.itemsize * 8


def _pack(slot: _Any, value, keep: list) -> None:
    slot.zero_padding = 0
    if value is None:
        slot.type_index, slot.v = _NONE, 0
    elif isinstance(value, bool):
        slot.type_index, slot.v = _BOOL, int(value)
    elif isinstance(value, int):
        slot.type_index, slot.v = _INT, value & 0xFFFFFFFFFFFFFFFF
    elif isinstance(value, str):
        raw = ctypes.c_char_p(value.encode())
        keep.append(raw)
        slot.type_index, slot.v = _RAW_STR, ctypes.cast(raw, ctypes.c_void_p).value
    elif isinstance(value, _Object):
        obj_type = ctypes.c_int32.from_address(value.handle + 8).value
        slot.type_index, slot.v = obj_type, value.handle
    elif isinstance(value, _Device):
        slot.type_index = _DEVICE
        ctypes.memmove(ctypes.addressof(slot) + 8, ctypes.byref(_DLDevice(value.device_type, value.index)), 8)
    elif isinstance(value, _DType):
        slot.type_index = _DATA_TYPE
        slot.v = 0
        ctypes.memmove(ctypes.addressof(slot) + 8, ctypes.byref(_DLDataType(value.code, value.bits, 1)), 4)
    else:
        raise TypeError(f"cannot pass {type(value).__name__} to the TVM runtime")


def _unpack(lib: _Library, result: _Any):
    t = result.type_index
    if t == _NONE:
        return None
    if t in (_INT, _BOOL):
        v = result.v
        return v - (1 << 64) if v >= 1 << 63 else v
    if t < _STATIC_OBJECT_BEGIN:
        raise ArtifactError(f"the TVM runtime returned a value of type index {t}, which sliver does not read")
    cls = {_TENSOR: Tensor, _ARRAY: Array, 68: Function, 73: Module}.get(t, _Object)
    return cls(lib, result.v)


_LIB: _Library | None = None
_LIB_LOCK = threading.Lock()


def library() -> _Library:
    """The libraries named by ``SLIVER_TVM_LIB_DIR`` (opened at the first call)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            _LIB = _Library(Path(os.environ[LIB_DIR_ENV]).resolve())
        return _LIB


class _VirtualMachine:
    """A Relax VM over a loaded library (as ``tvm.runtime.vm.VirtualMachine``)."""

    POOLED_ALLOCATOR = 2

    def __init__(self, lib_module: Module, device: _Device):
        self.module = lib_module["vm_load_executable"]()
        self.module["vm_initialization"](device.device_type, device.index, self.POOLED_ALLOCATOR)

    def __getitem__(self, name: str) -> Function:
        return self.module[name]


class _Namespace:
    pass


def _tensor(array) -> Tensor:
    lib = library()
    a = np.ascontiguousarray(array)
    shape = lib.global_function("ffi.Shape")(*[int(n) for n in a.shape])
    t = lib.global_function("runtime.TVMTensorAllocWithScope")(shape, _DType(a.dtype), _Device(_KDLCPU, 0), None)
    if a.nbytes:
        dl = t._dl()
        ctypes.memmove(dl.data + dl.byte_offset, a.ctypes.data, a.nbytes)
    return t


def load_module(path: str) -> Module:
    """Open a compiled library (``tvm_ffi.load_module``)."""
    return library().global_function("ffi.ModuleLoadFromFile")(str(path))


class _API:
    """What :mod:`sliver.runtime.artifact` calls of ``tvm``, over the C ABI."""

    def __init__(self):
        self.runtime = _Namespace()
        self.runtime.vm = _Namespace()
        self.runtime.vm.VirtualMachine = _VirtualMachine
        self.runtime.tensor = _tensor
        self.load_module = load_module

    @staticmethod
    def cpu(index: int = 0) -> _Device:
        return _Device(_KDLCPU, index)

    @staticmethod
    def get_global_func(name: str) -> Function:
        return library().global_function(name)


API = _API()


def selected() -> bool:
    """Whether the runtime should go through this module (``SLIVER_TVM_LIB_DIR`` is set)."""
    return bool(os.environ.get(LIB_DIR_ENV))
