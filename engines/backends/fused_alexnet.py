"""AlexNet rebuilt for batch-1 latency on a GPU: one CUDA graph of fourteen kernels.

torchvision's AlexNet, replayed as a CUDA graph, runs about forty kernels at batch 1
(docs/PERFORMANCE.md, target 1): cuDNN turns every activation from NCHW to NHWC and
back around each convolution, bias and ReLU are kernels of their own, the 11x11
stride-4 first convolution falls on a slow non-tensor-core kernel, and max-pooling
is a kernel per layer.  :class:`FusedAlexNet` computes the same function with:

* every activation in NHWC (channels-last) from the input on, so cuDNN runs its
  NHWC tensor-core kernels with no transposes;
* the first convolution as a 4x4 stride-1 convolution over a *space-to-depth*
  view of the input (4x4 pixel blocks of 3 channels = 48 channels, 56x56): the
  same sums (the 11x11 kernel zero-padded to 16x16), in a shape tensor cores
  like, and the rearrangement of the input is the copy into the static input
  buffer that a CUDA graph needs anyway;
* bias, ReLU and the 3x3 stride-2 max-pool in one Triton kernel after conv1,
  conv2 and conv5 (max(x + b) = max(x) + b for a per-channel b), and bias + ReLU
  in one kernel after conv3 and conv4;
* the fully connected layers as a Triton GEMV with bias and ReLU in its
  epilogue at batch 1 (cuBLAS otherwise), fc6's columns permuted once so the
  NHWC flatten needs no transpose; the adaptive average pool is the identity on
  the 6x6 map of a 224x224 input and is left out;
* the fp32 cast of the logits inside the graph, all buffers static.

Each part has a plain PyTorch fallback (``FusedKnobs``) so the rewrite is tested
on the CPU against torchvision's module; the Triton kernels import only on CUDA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from engines.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

PoolImpl = Literal["triton", "torch"]
ActImpl = Literal["triton", "cudnn", "torch"]
FcImpl = Literal["triton", "cublas", "cublaslt"]
Conv1Impl = Literal["s2d", "direct"]

CROP = 224
S2D = 4  # space-to-depth block of the first convolution (its stride)


@dataclass(frozen=True)
class FusedKnobs:
    """How each part of :class:`FusedAlexNet` is computed.

    The defaults are the configuration measured end to end on the H200 (docs/benchmarks/h200-latency/:
    0.1035 ms a pass on the GPU at batch 1 fp16).  Measured beside it in the same run: ``act=cudnn``
    0.1007 ms, ``fc=cublas`` 0.1150 ms, ``conv1=direct`` 0.1318 ms; torchvision's module as a CUDA
    graph 0.1939 ms."""

    conv1: Conv1Impl = "s2d"
    """``s2d``: 4x4 convolution over the space-to-depth input; ``direct``: the 11x11 stride-4 one (NHWC)."""
    pool: PoolImpl = "triton"
    """bias + ReLU + 3x3/2 max-pool: one Triton kernel, or PyTorch's three."""
    act: ActImpl = "triton"
    """bias + ReLU after conv3/conv4: a Triton kernel, cuDNN's fused convolution-bias-ReLU, or PyTorch."""
    fc: FcImpl = "triton"
    """fully connected layers at batch 1: Triton GEMV (bias/ReLU fused), cuBLAS (F.linear + relu), or
    cuBLASLt's bias+ReLU epilogue (torch._addmm_activation).  Batches above 1 always use cuBLAS."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its kernels for each convolution at load (a few ms per shape)."""

    @classmethod
    def parse(cls, text: str) -> "FusedKnobs":
        """``conv1=direct,fc=cublas`` -> knobs (empty text: the defaults)."""
        fields: dict[str, Any] = {}
        allowed: dict[str, tuple[str, ...]] = {
            "conv1": ("s2d", "direct"),
            "pool": ("triton", "torch"),
            "act": ("triton", "cudnn", "torch"),
            "fc": ("triton", "cublas", "cublaslt"),
            "cudnn_benchmark": ("0", "1"),
        }
        for item in (t.strip() for t in text.split(",") if t.strip()):
            name, _, value = item.partition("=")
            if name not in allowed or value not in allowed[name]:
                choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in allowed.items())
                raise ConfigError(f"fused knob {item!r} not understood; choose from {choices}")
            fields[name] = value == "1" if name == "cudnn_benchmark" else value
        return cls(**fields)

    def uses_triton(self, batch: int) -> bool:
        return self.pool == "triton" or self.act == "triton" or (self.fc == "triton" and batch == 1)


def is_torchvision_alexnet(module: "nn.Module") -> bool:
    """True for the layer layout :class:`FusedAlexNet` rewrites (torchvision's ``alexnet``)."""
    from torch import nn

    feats = getattr(module, "features", None)
    cls = getattr(module, "classifier", None)
    if not isinstance(feats, nn.Sequential) or not isinstance(cls, nn.Sequential) or len(feats) != 13:
        return False
    convs = [m for m in feats if isinstance(m, nn.Conv2d)]
    lins = [m for m in cls if isinstance(m, nn.Linear)]
    shapes = [tuple(c.weight.shape) for c in convs]
    return shapes == [(64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)] and [
        tuple(x.weight.shape) for x in lins
    ] == [(4096, 9216), (4096, 4096), (1000, 4096)]


def conv1_space_to_depth_weight(w: "torch.Tensor") -> "torch.Tensor":
    """conv1's (64, 3, 11, 11) stride-4 padding-2 kernel as a (64, 48, 4, 4) stride-1 padding-1 kernel over
    the space-to-depth input (channel ``c*16 + dy*4 + dx`` = pixel (4i+dy, 4j+dx) of channel c).

    Output pixel y of the original reads input rows 4y-2 .. 4y+8; over the blocked input with one block of
    padding it reads blocks y-1 .. y+2 = rows 4y-4 .. 4y+11, so kernel row kh sits at window row kh+2.
    """
    import torch

    out_ch, in_ch, k, _ = w.shape
    window = S2D * 4
    padded = torch.zeros(out_ch, in_ch, window, window, dtype=w.dtype, device=w.device)
    padded[:, :, 2 : 2 + k, 2 : 2 + k] = w
    # (o, c, by, dy, bx, dx) -> (o, c, dy, dx, by, bx) -> (o, c*16 + dy*4 + dx, by, bx)
    blocks = padded.view(out_ch, in_ch, 4, S2D, 4, S2D).permute(0, 1, 3, 5, 2, 4)
    return blocks.reshape(out_ch, in_ch * S2D * S2D, 4, 4).contiguous()


@functools.lru_cache(maxsize=1)
def triton_kernels() -> "_Kernels":
    """The one set of Triton kernels of this process (compiled, and the GEMV autotuned, on first use)."""
    return _Kernels()


class _Kernels:
    """The Triton kernels; imported only when a knob asks for Triton."""

    def __init__(self) -> None:
        import triton  # type: ignore[import-untyped]
        import triton.language as tl  # type: ignore[import-untyped]

        self.triton = triton

        @triton.jit
        def pool3s2_bias_relu(  # type: ignore[no-untyped-def]
            x_ptr, b_ptr, y_ptr, P, H, W, C, HO, WO, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
            pid_p = tl.program_id(0)
            pid_c = tl.program_id(1)
            p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
            c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            pm = p < P
            cm = c < C
            n = p // (HO * WO)
            r = p % (HO * WO)
            oh = r // WO
            ow = r % WO
            base = ((n * H + oh * 2) * W + ow * 2) * C
            mask = pm[:, None] & cm[None, :]
            acc = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
            for kh in tl.static_range(3):
                for kw in tl.static_range(3):
                    off = base + (kh * W + kw) * C
                    v = tl.load(x_ptr + off[:, None] + c[None, :], mask=mask, other=float("-inf"))
                    acc = tl.maximum(acc, v.to(tl.float32))
            b = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
            acc = tl.maximum(acc + b[None, :], 0.0)
            tl.store(y_ptr + p[:, None] * C + c[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)

        @triton.jit
        def bias_relu_(  # type: ignore[no-untyped-def]
            x_ptr, b_ptr, TOTAL, C, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = i < TOTAL
            v = tl.load(x_ptr + i, mask=m, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + i % C, mask=m, other=0.0).to(tl.float32)
            tl.store(x_ptr + i, tl.maximum(v + b, 0.0).to(x_ptr.dtype.element_ty), mask=m)

        configs = [
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw)
            for bn, bk, nw in ((4, 512, 4), (8, 512, 4), (8, 1024, 8), (16, 512, 8), (16, 256, 4), (2, 1024, 4))
        ]

        @triton.autotune(configs=configs, key=["N", "K"])
        @triton.jit
        def gemv_bias_act(  # type: ignore[no-untyped-def]
            w_ptr, x_ptr, b_ptr, y_ptr, N, K, RELU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
            rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
            rm = rows < N
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                km = ks < K
                w = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=rm[:, None] & km[None, :], other=0.0)
                x = tl.load(x_ptr + ks, mask=km, other=0.0)
                acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
            y = tl.sum(acc, axis=1) + tl.load(b_ptr + rows, mask=rm, other=0.0).to(tl.float32)
            if RELU:
                y = tl.maximum(y, 0.0)
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rm)

        self.pool3s2_bias_relu = pool3s2_bias_relu
        self.bias_relu_ = bias_relu_
        self.gemv_bias_act = gemv_bias_act

    def pool(self, x: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        """relu(maxpool3x3s2(x) + b) of an NHWC-stored (N, C, H, W) tensor, stored NHWC."""
        import torch

        n, c, h, w = x.shape
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            raise BackendError("fused alexnet: the pool expects a channels-last tensor")
        ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        out = torch.empty((n, ho, wo, c), device=x.device, dtype=x.dtype)
        p = n * ho * wo
        block_p, block_c = 16, 64
        grid = (self.triton.cdiv(p, block_p), self.triton.cdiv(c, block_c))
        self.pool3s2_bias_relu[grid](nhwc, b, out, p, h, w, c, ho, wo, BLOCK_P=block_p, BLOCK_C=block_c)
        return out.permute(0, 3, 1, 2)

    def bias_relu(self, x: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            raise BackendError("fused alexnet: bias+ReLU expects a channels-last tensor")
        total, block = x.numel(), 1024
        self.bias_relu_[(self.triton.cdiv(total, block),)](nhwc, b, total, x.shape[1], BLOCK=block)
        return x

    def linear(
        self, x: "torch.Tensor", w: "torch.Tensor", b: "torch.Tensor", relu: bool, config: tuple[int, int] | None = None
    ) -> "torch.Tensor":
        """relu?(x @ w.T + b) for one row x; ``config`` = (BLOCK_N, BLOCK_K) skips the autotuner."""
        import torch

        n, k = w.shape
        y = torch.empty((1, n), device=x.device, dtype=x.dtype)

        def grid(meta: dict[str, int]) -> tuple[int]:
            return (self.triton.cdiv(n, meta["BLOCK_N"]),)

        if config is not None:
            self.gemv_bias_act.fn[grid(dict(BLOCK_N=config[0]))](
                w, x, b, y, n, k, RELU=relu, BLOCK_N=config[0], BLOCK_K=config[1]
            )
        else:
            self.gemv_bias_act[grid](w, x, b, y, n, k, RELU=relu)
        return y


class FusedAlexNet:
    """torchvision's AlexNet (any weights) as one CUDA graph at a fixed batch; see the module docstring.

    ``infer(x)`` takes a (n, 3, 224, 224) batch, n <= batch, and returns (n, 1000) float32 logits
    (a new tensor).  ``graph=False`` runs the same kernels eagerly (the CPU tests use it with the
    PyTorch knobs).
    """

    def __init__(
        self,
        module: "nn.Module",
        device: str,
        dtype: "torch.dtype",
        batch: int,
        knobs: FusedKnobs | None = None,
        graph: bool = True,
    ) -> None:
        import torch
        import torch.nn.functional as F

        if not is_torchvision_alexnet(module):
            raise ConfigError("the fused torch path rewrites torchvision's AlexNet only (--model alexnet)")
        self.knobs = knobs or FusedKnobs()
        self.device = device
        self.dtype = dtype
        self.batch = batch
        if device == "cpu" and self.knobs.uses_triton(batch):
            raise ConfigError("fused alexnet: the Triton kernels need a CUDA device (use the torch knobs on the CPU)")
        self._k = triton_kernels() if self.knobs.uses_triton(batch) else None
        self._F = F
        cl = torch.channels_last
        feats = [m for m in module.features if isinstance(m, torch.nn.Conv2d)]  # type: ignore[union-attr]
        lins = [m for m in module.classifier if isinstance(m, torch.nn.Linear)]  # type: ignore[union-attr]

        def dev(t: "torch.Tensor", fmt: "torch.memory_format | None" = None) -> "torch.Tensor":
            out = t.detach().to(device=device, dtype=dtype)
            return out.contiguous(memory_format=fmt) if fmt is not None else out.contiguous()

        with torch.no_grad():
            w1 = feats[0].weight.detach()
            if self.knobs.conv1 == "s2d":
                self.w1 = dev(conv1_space_to_depth_weight(w1.float()), cl)
            else:
                self.w1 = dev(w1, cl)
            self.convs = [(dev(c.weight, cl), dev(c.bias)) for c in feats[1:]]  # type: ignore[arg-type]
            self.b1 = dev(feats[0].bias)  # type: ignore[arg-type]
            w6 = lins[0].weight.detach().view(4096, 256, 6, 6).permute(0, 2, 3, 1).reshape(4096, 9216)
            self.fcs = [(dev(w6), dev(lins[0].bias))] + [(dev(m.weight), dev(m.bias)) for m in lins[1:]]
        if self.knobs.conv1 == "s2d":
            # NHWC blocks: (n, 56, 56, 3, 4, 4) = channels-last (n, 48, 56, 56)
            self._static = torch.zeros((batch, CROP // S2D, CROP // S2D, 3 * S2D * S2D), device=device, dtype=dtype)
            self._static_in = self._static.view(batch, CROP // S2D, CROP // S2D, 3, S2D, S2D).permute(0, 3, 1, 4, 2, 5)
        else:
            self._static = torch.zeros((batch, 3, CROP, CROP), device=device, dtype=dtype).contiguous(memory_format=cl)
            self._static_in = self._static
        self._out: "torch.Tensor | None" = None
        self._graph: "torch.cuda.CUDAGraph | None" = None
        if graph:
            self._capture()

    # -- the network ----------------------------------------------------------
    def _pool(self, y: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        if self._k is not None and self.knobs.pool == "triton":
            return self._k.pool(y, b)
        F = self._F
        return F.max_pool2d(F.relu(y + b.view(1, -1, 1, 1)), 3, 2)

    def _conv_act(self, y: "torch.Tensor", w: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        import torch

        F = self._F
        if self.knobs.act == "cudnn":
            return torch.cudnn_convolution_relu(y, w, b, (1, 1), (1, 1), (1, 1), 1)
        if self.knobs.act == "triton" and self._k is not None:
            return self._k.bias_relu(F.conv2d(y, w, None, 1, 1), b)
        return F.relu(F.conv2d(y, w, b, 1, 1))

    def _linear(self, x: "torch.Tensor", i: int, relu: bool) -> "torch.Tensor":
        import torch

        F = self._F
        w, b = self.fcs[i]
        if x.shape[0] == 1 and self._k is not None and self.knobs.fc == "triton":
            return self._k.linear(x, w, b, relu)
        if relu and self.knobs.fc == "cublaslt":
            return torch._addmm_activation(b, x, w.t())
        y = F.linear(x, w, b)
        return F.relu(y) if relu else y

    def forward(self) -> "torch.Tensor":
        """The network on the static input buffer; returns float32 logits of the whole batch."""
        F = self._F
        if self.knobs.conv1 == "s2d":
            y = F.conv2d(self._static.permute(0, 3, 1, 2), self.w1, None, 1, 1)
        else:
            y = F.conv2d(self._static, self.w1, None, 4, 2)
        y = self._pool(y, self.b1)
        (w2, b2), (w3, b3), (w4, b4), (w5, b5) = self.convs
        y = self._pool(F.conv2d(y, w2, None, 1, 2), b2)
        y = self._conv_act(y, w3, b3)
        y = self._conv_act(y, w4, b4)
        y = self._pool(F.conv2d(y, w5, None, 1, 1), b5)
        if tuple(y.shape[2:]) != (6, 6):
            raise BackendError(f"fused alexnet: expected a 6x6 map before the classifier, got {tuple(y.shape[2:])}")
        x = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1)  # NHWC flatten; fc6's columns match it
        x = self._linear(x, 0, True)
        x = self._linear(x, 1, True)
        return self._linear(x, 2, False).float()

    def _capture(self) -> None:
        import torch

        with torch.backends.cudnn.flags(enabled=True, benchmark=self.knobs.cudnn_benchmark), torch.inference_mode():
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # Triton autotuning, cuDNN's plan search: outside the capture
                    self.forward()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out = self.forward()
        self._graph = graph

    def infer(self, x: "torch.Tensor") -> "torch.Tensor":
        n = int(x.shape[0])
        if n > self.batch:
            raise BackendError(f"fused alexnet: batch {n} exceeds the captured graph's {self.batch}")
        if tuple(x.shape[1:]) != (3, CROP, CROP):
            raise BackendError(f"fused alexnet: expected (N, 3, {CROP}, {CROP}) input, got {tuple(x.shape)}")
        with _inference_mode():
            if self.knobs.conv1 == "s2d":
                self._static_in[:n].copy_(x.reshape(n, 3, CROP // S2D, S2D, CROP // S2D, S2D))
            else:
                self._static_in[:n].copy_(x)
            if self._graph is None:
                return self.forward()[:n]
            self._graph.replay()
            assert self._out is not None
            return self._out[:n].clone()


def _inference_mode() -> Any:
    import torch

    return torch.inference_mode()

