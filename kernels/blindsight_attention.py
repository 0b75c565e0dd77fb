"""BlindSight sparse prefill attention: per-query-head categories in one Triton launch, dense heads on SDPA.

:func:`blindsight_attention` has exactly the semantics and shapes of
:func:`bsight.kernels.reference.reference_attention` (the float32 ground truth): ``q [Hq, S, D]``,
``k, v [Hkv, S, D]`` for one unpadded sequence, ``categories [Hq]`` of :class:`Category` values, the
model's own mask (causal, OR Gemma 3's bidirectional image region, AND a sliding window) intersected with
each head's category rule.

Routing:

* heads of category ``dense`` on a plain causal layer (no bidirectional image, no window shorter than the
  prompt) go to PyTorch SDPA with cuDNN first in priority (the fastest dense kernel on an H100), on the
  grouped K/V where cuDNN takes it (:func:`cudnn_takes_gqa`), on a side stream beside the kernel
  (``overlap_dense``, the default);
* every other head goes to the Triton kernel in :mod:`bsight.kernels.triton_fwd`, one launch for all of
  them (dense heads of bidirectional or sliding-window layers included).

Kernel tables (:mod:`bsight.kernels.plan`) are built on the device from the :class:`LayoutMeta` once per
prompt and reused by every layer (cached on the meta object's identity). CPU tensors run the same kernel
under Triton's interpreter (slow; for tests and CI) when ``TRITON_INTERPRET=1`` was set before triton was
imported, and are refused with a clear error otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton

from bsight.kernels import triton_fwd
from bsight.kernels.plan import PlanCache, TilePlan
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.metadata import LayoutMeta

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class KernelConfig:
    """Block sizes and launch shape of the Triton kernel (``block_m`` also sets the tile size). ``maxnreg``:
    a register cap per thread (None: the compiler's choice); 128 with 8 warps lets two programs share an SM,
    so that one program's start-up and softmax overlap the other's matrix work."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    maxnreg: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {v}")


def default_config(head_dim: int) -> KernelConfig:
    """Block shapes chosen by measurement on an H100 (kernels/NOTES.md, 2026-11-22): for head_dim <= 128,
    128x64 blocks, 8 warps, 3 stages was fastest or within 3% at 36K and 300K tokens against 128x64 with 2
    stages, 128x128, and 64-row tiles with two programs per SM (those won only ``sink`` at 36K, and lost
    10-25% at 300K). 256-wide heads need smaller tiles (no spills in the hot loop at 64x32)."""
    if head_dim > 128:
        return KernelConfig(block_m=64, block_n=32, num_warps=8, num_stages=2)
    return KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)


_PLANS = PlanCache()


def interpreting() -> bool:
    """Whether the kernel was decorated under Triton's interpreter (``TRITON_INTERPRET=1`` when triton and
    this package were imported): then it runs on CPU tensors, slowly, for tests and CI."""
    return not isinstance(triton_fwd.bsight_fwd_kernel, triton.runtime.jit.JITFunction)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    if device.type == "cpu":
        raise NotImplementedError(
            "blindsight_attention on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before triton "
            "is first imported (or use bsight.kernels.reference_attention on CPU)"
        )
    raise NotImplementedError(
        f"blindsight_attention runs on CUDA (or on the CPU under Triton's interpreter), not on {device.type}"
    )


def plan_for(meta: LayoutMeta, block_m: int, window: int | None) -> TilePlan:
    """The cached kernel tables of a prompt (built on first use, then reused by every layer)."""
    return _PLANS.get(meta, block_m, window)


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: LayoutMeta, categories: torch.Tensor, window: int | None
) -> list[int]:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be [heads, S, D]; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    Hq, S, D = q.shape
    Hkv = k.shape[0]
    if k.shape != v.shape or k.shape[1:] != (S, D):
        raise ValueError(f"k and v must be [Hkv, {S}, {D}] like q's S and D; got {tuple(k.shape)} and {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} key/value heads")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must all be bfloat16 or float16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 16 <= D <= MAX_HEAD_DIM:
        raise NotImplementedError(f"head_dim {D} is not supported by the BlindSight kernel (16 to {MAX_HEAD_DIM})")
    if S != meta.length:
        raise ValueError(f"sequence length {S} does not match the layout's {meta.length}")
    if not (q.device == k.device == v.device == meta.device):
        raise ValueError(
            f"q, k, v and the layout metadata must be on one device; got {q.device}, {k.device}, {v.device}, "
            f"{meta.device}"
        )
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"sliding window must be a positive int or None, got {window!r}")
    cats = categories.flatten().tolist()
    if len(cats) != Hq:
        raise ValueError(f"{len(cats)} head categories for {Hq} query heads")
    allowed = {c.value for c in Category}
    for h, c in enumerate(cats):
        if c not in allowed:
            raise ValueError(
                f"categories[{h}] = {c} is not a head category ({', '.join(f'{x.value}={x.label}' for x in Category)})"
            )
    return cats


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, gqa: bool) -> torch.Tensor:
    """Causal SDPA on ``[1, H, S, D]`` inputs under the dense baseline's policy (:data:`~bsight.kernels.dense_policy.
    DENSE_POLICY`: flash for short prompts, cuDNN with bucketed lengths for long ones), so blindsight's dense
    heads run exactly as method ``dense`` does."""
    from bsight.kernels.dense_policy import policy_causal_sdpa

    return policy_causal_sdpa(q, k, v, scale=scale, **({"enable_gqa": True} if gqa else {}))


@functools.lru_cache(maxsize=8)
def cudnn_takes_gqa(device: torch.device) -> bool:
    """Whether cuDNN SDPA runs grouped-query inputs itself on this device (torch >= 2.8): then dense heads
    need no K/V expansion. Probed once per device on a tiny input with cuDNN as the only backend."""
    if device.type != "cuda":
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 4, 128, 64, device=device, dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (RuntimeError, TypeError):
        return False


def _dense_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: list[int], group: int, scale: float | None
) -> torch.Tensor:
    """Causal SDPA for a subset of query heads -> ``[len(heads), S, D]``.

    Every head dense: SDPA's own call on q, k, v as given, grouped-query inside cuDNN where it can
    (:func:`cudnn_takes_gqa`), else K/V expanded to the query heads. A subset: q's heads copied out and
    K/V expanded to their groups.
    """
    if math.isclose(scale, q.shape[-1] ** -0.5, rel_tol=1e-6):
        scale = None  # SDPA's own default: the exact call the cuDNN baseline makes
    if len(heads) == q.shape[0]:
        if group == 1 or cudnn_takes_gqa(q.device):
            return _sdpa_causal(q[None], k[None], v[None], scale, gqa=group > 1)[0]
        return _sdpa_causal(
            q[None], k.repeat_interleave(group, 0)[None], v.repeat_interleave(group, 0)[None], scale, gqa=False
        )[0]
    idx = _device_ints(tuple(heads), q.device).long()
    kv = idx // group
    return _sdpa_causal(
        q.index_select(0, idx)[None], k.index_select(0, kv)[None], v.index_select(0, kv)[None], scale, gqa=False
    )[0]


def blindsight_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: LayoutMeta,
    categories: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    dense_backend: str = "auto",
    config: KernelConfig | None = None,
    out: torch.Tensor | None = None,
    overlap_dense: bool = True,
) -> torch.Tensor:
    """``q [Hq, S, D]``, ``k, v [Hkv, S, D]``, ``categories [Hq]`` -> ``[Hq, S, D]`` in ``q.dtype``.

    ``window``: the layer's sliding window (``kv > q - window``), or None. ``dense_backend``: ``"auto"``
    sends dense heads of plain causal layers to SDPA, ``"kernel"`` keeps them in the Triton kernel (tests,
    timing), ``"sdpa"`` demands SDPA (an error where the layer is not plain causal). ``config``: block
    sizes (default: :func:`default_config` for the head dim). ``out``: an ``[Hq, S, D]`` tensor of q's
    dtype and device to write into (every element is written). ``overlap_dense``: on CUDA, when some heads
    go to SDPA and others to the kernel, run SDPA on a side stream so that the two overlap (each fills the
    other's tail; on an H100 at 36K tokens, 30% dense heads: 6% faster on mixed image sizes, even on
    1024-token images, on average over five runs, kernels/NOTES.md); the caller's stream waits for both before
    this returns.
    """
    cats = _check_inputs(q, k, v, meta, categories, window)
    _check_device(q.device)
    Hq, S, D = q.shape
    group = Hq // k.shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not scale > 0:  # the kernel takes row maxima of unscaled logits
        raise ValueError(f"scale must be a positive number, got {scale}")
    if window is not None and window >= S:
        window = None  # every key of the prompt is inside the window
    plain_causal = window is None and not meta.has_bidirectional
    if dense_backend not in ("auto", "kernel", "sdpa"):
        raise ValueError(f"dense_backend must be 'auto', 'kernel' or 'sdpa', got {dense_backend!r}")
    if dense_backend == "sdpa" and not plain_causal:
        raise ValueError("dense_backend='sdpa' needs a plain causal layer (no bidirectional image, no sliding window)")
    to_sdpa = [h for h, c in enumerate(cats) if c == Category.DENSE and plain_causal and dense_backend != "kernel"]
    to_kernel = sorted(set(range(Hq)) - set(to_sdpa))

    given_out = out is not None
    if out is None:
        out = torch.empty(Hq, S, D, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(
            f"out must be a {tuple(q.shape)} {q.dtype} tensor on {q.device} with unit stride in D; got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    if to_sdpa and to_kernel and overlap_dense and q.device.type == "cuda":
        main, side = torch.cuda.current_stream(q.device), _side_stream(q.device)
        idx = _device_ints(tuple(to_sdpa), q.device).long()  # made on the main stream (cached from then on)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out.index_copy_(0, idx, _dense_sdpa(q, k, v, to_sdpa, group, scale))
        _launch(q, k, v, out, meta, cats, to_kernel, group, scale, window, config or default_config(D))
        main.wait_stream(side)  # (side-stream temporaries return to the side stream's pool: reuse stays ordered)
        return out
    if to_sdpa:
        dense = _dense_sdpa(q, k, v, to_sdpa, group, scale)
        if not to_kernel and not given_out:
            return dense  # every head dense: SDPA's own output, no copy
        out.index_copy_(0, _device_ints(tuple(to_sdpa), q.device).long(), dense)  # no host index: no sync
    if to_kernel and S:
        _launch(q, k, v, out, meta, cats, to_kernel, group, scale, window, config or default_config(D))
    return out


@functools.lru_cache(maxsize=8)
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream that runs dense heads beside the kernel (``overlap_dense``), one per device. (At the
    highest priority it measured the same on an H100: kernels/NOTES.md, 2026-11-23.)"""
    return torch.cuda.Stream(device)


@functools.lru_cache(maxsize=256)
def _device_ints(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Small int32 tables (head lists, categories) copied to the device once, not at every layer: a copy
    from pageable host memory would stall the host behind the GPU's queue."""
    return torch.tensor(values, dtype=torch.int32, device=device)


def _nonempty(t: torch.Tensor) -> torch.Tensor:
    """Triton needs a real pointer even for a table that no program reads (no images, no text)."""
    return t if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x', x'[:, index])``: the rows of ``x [H, S, D]`` at ``index``, laid out with the row stride of ``x'``
    (``x`` itself when its rows are evenly strided, else a contiguous copy), so that the kernel walks the
    gathered list and the full K/V with one row stride: a block's source is then just a base pointer."""
    H, S, D = x.shape
    if x.stride(-1) == 1 and x.stride(1) == D:  # [H, S, D] rows: a contiguous gather
        return x, x.index_select(1, index)
    if x.stride(-1) == 1 and x.stride(0) == D and x.stride(1) == H * D:  # a [S, H, D] buffer seen as [H, S, D]
        return x, x.transpose(0, 1).index_select(0, index).transpose(0, 1)
    x = x.contiguous()
    return x, x.index_select(1, index)


def _launch(
    q,
    k,
    v,
    out,
    meta: LayoutMeta,
    cats: list[int],
    heads: list[int],
    group: int,
    scale: float,
    window: int | None,
    cfg: KernelConfig,
) -> None:
    plan = plan_for(meta, cfg.block_m, window)
    if plan.num_tiles == 0:
        return
    Hq, S, D = q.shape
    dev = q.device
    q = q if q.stride(-1) == 1 else q.contiguous()
    needs_lists = meta.num_images > 0 and any(cats[h] != Category.DENSE for h in heads)
    if needs_lists:
        (k, kg), (v, vg) = _gather_rows(k, plan.key_pos), _gather_rows(v, plan.key_pos)
    else:
        k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
        kg, vg = k, v
    heads_t = _device_ints(tuple(heads), dev)
    cats_t = _device_ints(tuple(cats[h] for h in heads), dev)  # per program head: no load chain in the kernel
    block_d = max(16, triton.next_power_of_2(D))
    grid = (plan.num_tiles * len(heads),)
    triton_fwd.bsight_fwd_kernel[grid](
        q,
        k,
        v,
        kg,
        vg,
        out,
        heads_t,
        cats_t,
        plan.tiles,
        _nonempty(plan.key_pos),
        _nonempty(meta.text_idx),
        meta.is_sink,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        kg.stride(0),
        k.stride(1),
        v.stride(0),
        vg.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        len(heads),
        group,
        plan.num_text,
        scale * 1.4426950408889634,
        window if window is not None else 0,
        D=D,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=block_d,
        HAS_BIDIR=bool(meta.has_bidirectional),
        HAS_WINDOW=window is not None,
        UPCAST=interpreting() and q.dtype == torch.bfloat16,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )
