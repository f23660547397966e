"""ONNX Runtime backend: the model exported once to ONNX (cached), run by an execution provider.

On the CPU this is the CPU execution provider (fp32 only).  On ``cuda[:N]`` it
uses the TensorRT execution provider where the installed onnxruntime offers it
(fp32 or fp16, engines cached under the cache folder), else the CUDA execution
provider (fp32).  ``int8`` is refused: the TensorRT execution provider needs a
calibration table for a plain (non-QDQ) model, which this backend does not
make - the ``tensorrt`` backend calibrates from ``--calib-dir``.

The ONNX file comes from the store (:func:`engines.onnx_export.cached_onnx`), so
a second load skips the export, and a stored export that does not match its
manifest is exported again.  The graph has a dynamic batch axis when
``options.dynamic_batch`` is set (see :meth:`BackendOptions.for_batch`), else
the fixed batch ``options.batch`` (a smaller batch is padded).  The TensorRT
provider's engine folder is named by the store (:meth:`Store.folder_for`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from engines.backends.base import Artifact, Backend, BackendOptions, resolve_device_name
from engines.errors import BackendError, BackendUnavailable, ConfigError, EngineError
from engines.models import ModelSpec, WeightsChoice
from engines.onnx_export import INPUT_NAME as INPUT
from engines.onnx_export import OUTPUT_NAME as OUTPUT

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
_ORT_LOG_ERROR = 3
"""onnxruntime severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal."""


def allowed_cpus_if_restricted() -> int | None:
    """The CPUs this process may use, when fewer than the machine has (``taskset``, a container's cpuset); else None.

    onnxruntime sizes its intra-op pool from the machine's cores, not the process's affinity (measured:
    under ``taskset -c 0`` on a 2-core machine it still starts a second thread), so pinned to 2 of 16 cores
    it would start a thread per core of the machine on the two it may use.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    total = os.cpu_count() or allowed
    return allowed if 0 < allowed < total else None


def short_provider_names(providers: tuple[str, ...] | list[str]) -> str:
    """``("CUDAExecutionProvider", "CPUExecutionProvider")`` -> ``"CUDA+CPU"``."""
    return "+".join(p.removesuffix("ExecutionProvider") for p in providers) or "none"


def _precision_message(precision: str, device: str, gpu_providers: tuple[str, ...]) -> str:
    if precision == "int8":
        if TENSORRT_EP in gpu_providers:
            return (
                "onnxruntime backend: int8 through the TensorRT execution provider needs a calibration "
                "table, which this backend does not build; use --backend tensorrt --precision int8 --calib-dir DIR"
            )
        return (
            "onnxruntime backend: int8 needs onnxruntime's TensorRT execution provider on a CUDA device "
            f"(device {device}; available: {short_provider_names(gpu_providers) if gpu_providers else 'CPU only'}); "
            "use --backend tensorrt for int8"
        )
    if device == "cpu":
        return "onnxruntime backend: fp16 is not supported by the CPU execution provider; use --precision fp32"
    return (
        "onnxruntime backend: fp16 needs onnxruntime's TensorRT execution provider "
        f"(available: {short_provider_names(gpu_providers) or 'none'}); use --precision fp32 or --backend tensorrt"
    )


class OnnxRuntimeBackend(Backend):
    """Runs the cached ONNX export of a model with ONNX Runtime."""

    name = "onnxruntime"
    supported_providers: ClassVar[tuple[str, ...]] = (TENSORRT_EP, CUDA_EP, CPU_EP)
    """Execution providers this backend knows how to configure, in order of preference on a GPU."""

    @classmethod
    def unsupported(cls, options: BackendOptions) -> str | None:
        if resolve_device_name(options.device) == "cpu" and options.precision != "fp32":
            return _precision_message(options.precision, "cpu", gpu_providers=())
        return None

    def __init__(self, spec: ModelSpec, weights: WeightsChoice, options: BackendOptions | None = None) -> None:
        super().__init__(spec, weights, options)
        reason = self.unsupported(self.options)
        if reason is not None:
            raise ConfigError(reason)
        self._session: Any = None
        self._providers: tuple[str, ...] = ()

    @property
    def onnx_path(self) -> Path | None:
        """The ONNX file the session was loaded from (None before ``load``)."""
        return self.artifact.path if self.artifact is not None else None

    # -- what is running ------------------------------------------------------------
    @property
    def active_providers(self) -> tuple[str, ...]:
        """Execution providers of the live session, first preferred (empty when not loaded)."""
        return self._providers

    @property
    def provider(self) -> str | None:
        """The execution provider nodes go to first, e.g. ``CPUExecutionProvider`` (None when not loaded)."""
        return self._providers[0] if self._providers else None

    @property
    def description(self) -> str:
        text = super().description
        if self._providers:
            text += f" via {self._providers[0]}"
        return text

    @property
    def input_device(self) -> str:
        """``cpu`` for the CPU execution provider; the GPU for the CUDA/TensorRT ones (I/O binding)."""
        if self._providers:
            return "cpu" if self._providers[0] == CPU_EP else self.device
        return "cpu" if self.device == "cpu" else self.device

    # -- lifecycle ---------------------------------------------------------------
    def _choose_providers(self, available: list[str]) -> tuple[str, ...]:
        """Execution providers to ask for, best first; raises when the device or precision cannot be served."""
        if self.device == "cpu":
            return (CPU_EP,)
        gpu = tuple(p for p in (TENSORRT_EP, CUDA_EP) if p in available)
        if not gpu:
            raise BackendUnavailable(
                f"onnxruntime backend: device {self.device} requested but the installed onnxruntime has no GPU "
                f"execution provider (available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        if self.precision == "int8" or (self.precision == "fp16" and TENSORRT_EP not in gpu):
            raise ConfigError(_precision_message(self.precision, self.device, gpu))
        return (*gpu, CPU_EP)

    def _provider_options(self, providers: tuple[str, ...], onnx_sha: str) -> list[Any]:
        """``providers`` with their options, as ``InferenceSession(providers=...)`` takes them."""
        index = int(self.device.split(":")[1]) if self.device.startswith("cuda") else 0
        out: list[Any] = []
        for provider in providers:
            if provider == TENSORRT_EP:
                out.append((provider, self._tensorrt_options(index, onnx_sha)))
            elif provider == CUDA_EP:
                out.append((provider, {"device_id": index}))
            else:
                out.append(provider)
        return out

    def _tensorrt_options(self, index: int, onnx_sha: str) -> dict[str, Any]:
        from engines.cache import OrtFolderKey, Store

        key = OrtFolderKey(
            model=self.spec.name,
            onnx_sha256=onnx_sha,
            precision=self.precision,
            batch=self.options.batch,
            dynamic=self.options.dynamic_batch,
            workspace_mb=self.options.workspace_mb,
        )
        engine_dir = Store(self.options.cache_dir).folder_for(key)
        c, h, w = self.spec.preprocess.input_shape
        options: dict[str, Any] = {
            "device_id": index,
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engine_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engine_dir),
        }
        if self.options.workspace_mb is not None:
            options["trt_max_workspace_size"] = self.options.workspace_mb * (1 << 20)
        if self.options.dynamic_batch:  # one optimisation profile covering 1..batch
            largest = f"{INPUT}:{self.options.batch}x{c}x{h}x{w}"
            options["trt_profile_min_shapes"] = f"{INPUT}:1x{c}x{h}x{w}"
            options["trt_profile_opt_shapes"] = largest
            options["trt_profile_max_shapes"] = largest
        return options

    def _load_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime backend needs onnxruntime: pip install 'streamer[onnx]'") from exc
        from engines.onnx_export import cached_onnx

        if not logging.getLogger("engines").isEnabledFor(logging.DEBUG):
            # The process-wide logger too: its provider and telemetry warnings come before any session's options apply.
            ort.set_default_logger_severity(_ORT_LOG_ERROR)
        providers = self._choose_providers(list(ort.get_available_providers()))  # before a long export
        options = self.options
        export = cached_onnx(self.spec, self.weights, options.batch, options.dynamic_batch, cache_dir=options.cache_dir)
        path = export.value
        try:
            session = self._make_session(ort, path, self._provider_options(providers, export.sha256))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EngineError(f"onnxruntime backend: cannot create a session for {path.name}: {exc}") from exc
        active = tuple(session.get_providers())
        wanted = providers[0]
        if active[:1] != (wanted,):
            # onnxruntime quietly falls back to the CPU when a GPU provider fails to start
            # (missing CUDA or cuDNN libraries, for one): say so instead of running slowly.
            raise BackendUnavailable(
                f"onnxruntime backend: {wanted} did not start (session runs on {', '.join(active)}); "
                "check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs, or use --device cpu"
            )
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT] or outputs != [OUTPUT]:
            raise EngineError(f"onnxruntime backend: {path.name} has inputs {inputs} and outputs {outputs}")
        self._session = session
        self._providers = active
        self.artifact = Artifact.from_cache(export)

    def _make_session(self, ort: Any, path: Path, providers: list[Any]) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = _ORT_LOG_ERROR
        threads = self.options.threads if self.options.threads is not None else allowed_cpus_if_restricted()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        # onnxruntime's worker threads spin between calls by default, burning the cores that
        # the pipeline's decode, render and encode threads need on a small CPU.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import numpy as np
        import torch

        session = self._session
        if session is None:  # pragma: no cover - guarded by Backend.infer
            raise BackendError("onnxruntime backend: no session")
        n = int(batch.shape[0])
        if not self.options.dynamic_batch and n != self.options.batch:  # a fixed graph takes exactly `batch` rows
            batch = torch.cat([batch, batch.new_zeros((self.options.batch - n, *batch.shape[1:]))])
        if self._providers[0] != CPU_EP and batch.device.type == "cuda":
            return self._infer_bound(batch)[:n]
        x = batch.detach()
        if x.device.type != "cpu" or x.dtype != torch.float32:
            x = x.to("cpu", torch.float32)
        (logits,) = session.run([OUTPUT], {INPUT: np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))[:n]

    def _infer_bound(self, batch: "torch.Tensor") -> "torch.Tensor":
        """GPU providers: bind the torch tensors' device memory, no host round trip."""
        import numpy as np
        import torch

        index = int(self.device.split(":")[1])
        x = batch.detach().to(self.device, torch.float32).contiguous()
        out = torch.empty((int(x.shape[0]), self.spec.num_classes), dtype=torch.float32, device=self.device)
        binding = self._session.io_binding()
        binding.bind_input(INPUT, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # onnxruntime runs on its own stream
        self._session.run_with_iobinding(binding)
        return out

    def _close_impl(self) -> None:
        self._session = None
        self._providers = ()
