"""The cache key of a TensorRT-family engine, and the I/O and shape profile it must have."""

from __future__ import annotations

from engines.backends.base import BackendOptions
from engines.backends.tensorrt.util import DeviceInfo
from engines.cache import EngineKey, ShapeProfile, TensorSpec, host_platform
from engines.models import ModelSpec
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME


def expected_io(spec: ModelSpec, options: BackendOptions) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The I/O tensors an engine for ``spec`` and ``options`` must have (-1: the dynamic batch)."""
    n = -1 if options.dynamic_batch else options.batch
    return (
        (TensorSpec(INPUT_NAME, (n, *spec.preprocess.input_shape), "float32"),),
        (TensorSpec(OUTPUT_NAME, (n, spec.num_classes), "float32"),),
    )


def shape_profile(spec: ModelSpec, options: BackendOptions) -> tuple[ShapeProfile, ...]:
    """The optimisation profiles of a dynamic batch (none for a static one): profile 0 is 1..1 (opt 1),
    for a live source's single frames; with ``batch > 1`` profile 1 is 1..batch (opt = batch), for a
    file's batches.  The runner selects profile 0 for one row and profile 1 for more."""
    if not options.dynamic_batch:
        return ()
    chw = spec.preprocess.input_shape
    one = (1, *chw)
    profiles = [ShapeProfile(INPUT_NAME, one, one, one)]
    if options.batch > 1:
        profiles.append(ShapeProfile(INPUT_NAME, one, (options.batch, *chw), (options.batch, *chw)))
    return tuple(profiles)


def preprocess_token(spec: ModelSpec) -> str:
    """The model's preprocessing as a key value (int8 scales depend on the calibration inputs it makes)."""
    p = spec.preprocess
    return (
        f"resize={p.resize},crop={p.crop},mean={list(p.mean)},std={list(p.std)},"
        f"interp={p.interpolation},order={p.channel_order}"
    )


def engine_key(
    spec: ModelSpec,
    options: BackendOptions,
    *,
    producer: str,
    source_sha256: str,
    source_format: str,
    device: DeviceInfo,
    trt_version: str,
    calib_sha256: str | None,
    extra: dict[str, str] | None = None,
    workspace_keyed: bool = True,
) -> EngineKey:
    """The cache key of an engine (shared by the tensorrt and torch2trt backends)."""
    inputs, _outputs = expected_io(spec, options)
    system, arch = host_platform()
    extra = dict(extra or {})
    if options.precision == "int8":
        extra["preprocess"] = preprocess_token(spec)
    return EngineKey(
        producer=producer,
        model=spec.name,
        precision=options.precision,
        source_sha256=source_sha256,
        source_format=source_format,
        calib_sha256=calib_sha256,
        inputs=inputs,
        profile=shape_profile(spec, options),
        workspace_mb=options.workspace_mb if workspace_keyed else None,
        trt_version=trt_version,
        cuda_version=device.cuda_version,
        gpu_name=device.name,
        compute_capability=device.cc,
        os=system,
        arch=arch,
        gpu_sm_count=device.sm_count,
        gpu_memory_mb=device.memory_mb,
        extra=tuple(sorted(extra.items())),
    )
