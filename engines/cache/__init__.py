"""The store: every artifact streamer caches on disk, under one key scheme, lock, write and manifest.

Three kinds of entry live under the cache folder (private, 0700)::

    <stem>.engine | <stem>.trtmodule   a TensorRT engine or a torch2trt module  (EngineKey)
    onnx/<stem>.onnx                   an ONNX export                          (OnnxKey)
    ort-tensorrt/<stem>/               a folder onnxruntime's TensorRT provider fills (OrtFolderKey)

Every key is a frozen dataclass whose canonical JSON (sorted keys, no
whitespace) is hashed with SHA-256; the first 16 hex digits end the entry's
file stem, after readable fields (model, precision, batch...).  A file entry
has a manifest, ``<stem>.json``, written last: the key, the payload's SHA-256
and size, its I/O tensors and what the builder reported.  :meth:`Store.get_or_build`
checks all of it on every load - the key, the size, the SHA-256 of the
payload's bytes, then the loader's own checks - and a payload that does not
match is logged as one warning and rebuilt; the manifest is only ever written
from the bytes a builder just produced, so it never blesses a damaged payload.

Writes take a per-key file lock (``<stem>.lock``), write to a temporary file
in the same folder, ``fsync`` it and ``os.replace`` it into place.  Two
processes that want the same entry: one builds while the other waits on the
lock and then loads.  ONNX Runtime keeps no lock on its folders and checks its
own engines, so a folder entry has no manifest; the store only names it
(:meth:`Store.folder_for`), lists it and clears it.

The store knows nothing about TensorRT or ONNX: it is given a *builder* (makes
the payload bytes) and a *loader* (turns a verified payload file into a live
object and reports its I/O tensors), so it is tested with stand-ins.
"""

from engines.cache.key import (
    CACHE_FORMAT_VERSION,
    KIND_ENGINE,
    KIND_ONNX,
    KIND_ORT,
    KIND_TRTMODULE,
    KINDS,
    EngineKey,
    Kind,
    OnnxKey,
    OrtFolderKey,
    ShapeProfile,
    StoreKey,
    TensorSpec,
    canonical_json,
    host_platform,
    sha256_bytes,
)
from engines.paths import sha256_file
from engines.cache.store import (
    Built,
    CacheEntry,
    CacheResult,
    Cleared,
    EntryPaths,
    InvalidEntry,
    Loaded,
    Store,
    atomic_write,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "KINDS",
    "KIND_ENGINE",
    "KIND_ONNX",
    "KIND_ORT",
    "KIND_TRTMODULE",
    "Built",
    "CacheEntry",
    "CacheResult",
    "Cleared",
    "EngineKey",
    "EntryPaths",
    "InvalidEntry",
    "Kind",
    "Loaded",
    "OnnxKey",
    "OrtFolderKey",
    "ShapeProfile",
    "Store",
    "StoreKey",
    "TensorSpec",
    "atomic_write",
    "canonical_json",
    "host_platform",
    "sha256_bytes",
    "sha256_file",
]
