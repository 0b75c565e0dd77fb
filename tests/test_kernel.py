"""The BlindSight Triton kernel against the float32 reference attention (the ground truth).

On a machine without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1`` must be set
before triton is first imported; this file sets it when it is the first to import triton). Sizes there are
small and blocks are 16-32 wide so that tile edges, ragged images and list ends are all crossed. With a GPU
the same tests run compiled at the default block sizes, and the ``full size`` tests run at 36K tokens.

Every call gets fresh random inputs (the seed is in each failure message) and an output poisoned with NaN,
so an unwritten element fails. Two checks per case: bf16 (or fp16) relative error per head <= 1e-2 on
random data, and a *uniform-attention probe* (q = 0, so every kept key weighs the same and the output is
the mean of the kept values) in fp16, where a single key wrongly kept or dropped moves the output by
about 1/n and fails a tight tolerance.
"""

from __future__ import annotations

import os
import random

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from bsight.kernels.blindsight_attention import KernelConfig, blindsight_attention, interpreting
from bsight.kernels.plan import build_plan
from bsight.kernels.reference import reference_attention
from bsight.kernels.sparsity.categories import Category
from bsight.kernels.sparsity.layout import PromptLayout, SinkPolicy
from bsight.kernels.sparsity.metadata import LayoutMeta

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# small blocks under the interpreter: many tiles and list ends at small sizes (and it is slow)
SMALL = None if GPU else KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
MEDIUM = None if GPU else KernelConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)


@pytest.fixture(autouse=True)
def _kernel_runs_here():
    if not GPU and not interpreting():
        pytest.fail(
            "no GPU and the kernel is compiled: set TRITON_INTERPRET=1 before triton is first imported (e.g. "
            "in CI's env)"
        )


def _seed() -> int:
    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    return seed


def random_layout(
    rng: random.Random,
    images: list[int],
    text: tuple[int, int] = (0, 9),
    lead_text: bool = True,
    tail_text: bool = True,
    sinks: SinkPolicy = SinkPolicy(kind="offsets", offsets=(0, 1, 2, 3)),
    bidirectional: bool = False,
) -> PromptLayout:
    """Images of the given sizes with random text between them (none before / after the images if asked)."""
    segs: list[tuple[str, int]] = []
    for i, n in enumerate(images):
        if i or lead_text:
            segs.append(("text", rng.randint(*text)))
        segs.append(("image", n))
    if tail_text or not images:
        segs.append(("text", rng.randint(max(1, text[0]), max(1, text[1]))))
    return PromptLayout.from_segments(segs, sinks=sinks, bidirectional=bidirectional)


def _reference(q, k, v, meta: LayoutMeta, cats: torch.Tensor, window: int | None) -> torch.Tensor:
    """The float32 reference, one KV group at a time on a GPU: its query chunks grow along the prompt, so the
    caching allocator keeps a fresh block per chunk (tens of GB for 28 heads at 36K, enough to starve a
    test in another worker); per group and with the cache emptied after each, it stays a few GB."""
    if not GPU:
        return reference_attention(q, k, v, meta, cats, window=window).float()
    g = q.shape[0] // k.shape[0]
    parts = []
    for h in range(k.shape[0]):
        parts.append(
            reference_attention(
                q[h * g : (h + 1) * g], k[h : h + 1], v[h : h + 1], meta, cats[h * g : (h + 1) * g], window=window
            ).float()
        )
        torch.cuda.empty_cache()
    return torch.cat(parts)


def check(
    layout: PromptLayout,
    categories: list[int],
    hkv: int,
    d: int = 32,
    dtype=torch.bfloat16,
    window: int | None = None,
    config: KernelConfig | None = SMALL,
    dense_backend: str = "kernel",
    probe: bool = True,
    label: str = "",
    token_major: bool = False,
    overlap_dense: bool = False,
) -> None:
    """Kernel vs reference on random data (rel. error per head <= 1e-2) and on the uniform probe.

    ``token_major``: q, k, v are ``[S, H, D]`` buffers seen as ``[H, S, D]`` (what a model's projections
    give after a transpose), not contiguous per head."""
    seed = _seed()
    meta = LayoutMeta.build(layout, DEVICE)
    S, hq = layout.length, len(categories)
    cats = torch.tensor(categories, dtype=torch.int32)
    ctx = (
        f"{label} seed={seed} S={S} cats={categories} hkv={hkv} d={d} window={window} "
        f"spans={[(s.start, s.end) for s in layout.spans]}"
    )

    def run(q, k, v):
        out = torch.full_like(q, float("nan"))
        got = blindsight_attention(
            q,
            k,
            v,
            meta,
            cats,
            window=window,
            dense_backend=dense_backend,
            config=config,
            out=out,
            overlap_dense=overlap_dense,
        )
        assert got.data_ptr() == out.data_ptr()
        assert torch.isfinite(out).all(), f"unwritten or non-finite output: {ctx}"
        return out.float(), _reference(q, k, v, meta, cats, window)

    def draw(h: int) -> torch.Tensor:
        return (
            torch.randn(S, h, d, device=DEVICE, dtype=dtype).transpose(0, 1)
            if token_major
            else torch.randn(h, S, d, device=DEVICE, dtype=dtype)
        )

    q, k, v = draw(hq), draw(hkv), draw(hkv)
    out, ref = run(q, k, v)
    rel = (out - ref).norm(dim=(1, 2)) / ref.norm(dim=(1, 2))
    assert (rel <= 1e-2).all(), f"relative error per head {rel.tolist()}: {ctx}"

    if probe:  # q = 0: uniform weights over the kept keys; fp16 resolves one key more or less
        q0 = torch.zeros(hq, S, d, device=DEVICE, dtype=torch.float16)
        out, ref = run(q0, k.half(), v.half())
        err = (out - ref).abs().amax().item()
        assert err <= 2e-3, f"uniform probe: max abs error {err:.2e} (a key kept or dropped wrongly): {ctx}"


def mixed_categories(rng: random.Random, hq: int) -> list[int]:
    """All four categories when there are enough heads, in random order (GQA groups get mixed ones)."""
    cats = [c.value for c in Category] * (hq // 4 + 1)
    rng.shuffle(cats)
    return cats[:hq]


def test_every_category_and_mix_ragged_images():
    rng = random.Random(_seed())
    # images of 1..40 tokens, one at the very start, the prompt ending on an image; lengths not block multiples
    images = rng.sample([1, 2, 3, 5, 15, 16, 17, 31, 33, 40], 5)
    layout = random_layout(rng, images, lead_text=False, tail_text=False)
    check(layout, [0, 1, 2, 3, 3, 1, 0, 2], hkv=2, label="all categories, mixed within KV groups")


@pytest.mark.parametrize("group", [1, 4, 7, 8])
def test_gqa_ratios(group: int):
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(1, 40) for _ in range(3)])
    cats = mixed_categories(rng, group) if group > 1 else [rng.choice([1, 2, 3])]
    check(layout, cats, hkv=1, d=16, label=f"GQA ratio {group}")


@pytest.mark.parametrize("category", list(Category))
def test_single_category_all_heads(category: Category):
    rng = random.Random(_seed())
    layout = random_layout(
        rng,
        [rng.randint(20, 70), rng.randint(1, 20), rng.randint(20, 70)],
        sinks=SinkPolicy(kind="fraction", fraction=0.1),
    )
    check(
        layout, [category.value] * 2, hkv=1, config=MEDIUM, probe=category is not Category.DENSE, label=category.label
    )


def test_block_boundaries():
    """Where the unmasked blocks end: list prefixes of every length mod 16, text tiles at scattered starts.

    16 images of 3 tokens with 2 sinks, each after one text token: image i sees ``i + 1`` earlier text keys
    and ``3 i + 1`` earlier text + sink keys, every residue mod 16 (the block width here), so a list's
    unmasked part ending one key early or late is hit. Irregular text runs at the end give text tiles whose
    first row falls at scattered offsets, so the diagonal block's start is tested too.
    """
    rng = random.Random(_seed())
    segs: list[tuple[str, int]] = []
    for _ in range(16):
        segs += [("text", 1), ("image", 3)]
    for _ in range(8):
        segs += [("text", rng.randint(1, 7)), ("image", rng.randint(1, 5))]
    layout = PromptLayout.from_segments(segs, sinks=SinkPolicy(kind="offsets", offsets=(0, 1)))
    meta = LayoutMeta.build(layout)
    assert {int(x) % 16 for x in meta.text_before[:16]} == set(range(16))
    assert {int(x) % 16 for x in meta.glob_before[:16]} == set(range(16))
    check(layout, [1, 2, 3], hkv=1, d=16, label="block boundaries")


def test_text_only_prompt():
    layout = PromptLayout.from_segments([("text", random.randint(20, 70))])
    check(layout, [0, 1, 2, 3], hkv=2, label="text only")


@pytest.mark.parametrize("overlap", [False, True])
def test_dense_heads_through_sdpa_match(overlap: bool):
    """Dense heads on SDPA, the rest in the kernel (on a GPU with ``overlap_dense``: on a side stream)."""
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(1, 50) for _ in range(3)])
    check(
        layout,
        [0, 3, 0, 1],
        hkv=2,
        dense_backend="auto",
        probe=False,
        label="dense heads on SDPA",
        overlap_dense=overlap,
    )


def test_token_major_inputs():
    """q, k, v as ``[S, H, D]`` buffers seen as ``[H, S, D]``: the gathered key list takes K's row stride."""
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(1, 40) for _ in range(4)])
    check(layout, mixed_categories(rng, 4), hkv=2, token_major=True, probe=False, label="token-major q, k, v")


def test_bidirectional_images_with_inner_sinks():
    """Gemma 3: bidirectional inside each image; sinks at fixed offsets, some after a query in its region."""
    rng = random.Random(_seed())
    layout = random_layout(
        rng,
        [rng.randint(10, 45), 1, 2, rng.randint(3, 30)],
        bidirectional=True,
        sinks=SinkPolicy(kind="offsets", offsets=(0, 3, 9, 20)),
    )
    check(layout, mixed_categories(rng, 8), hkv=2, dtype=torch.float16, label="bidirectional")


def test_sliding_window_with_bidirectional_images():
    rng = random.Random(_seed())
    layout = random_layout(
        rng,
        [rng.randint(10, 40) for _ in range(3)],
        bidirectional=True,
        sinks=SinkPolicy(kind="offsets", offsets=(0, 5)),
    )
    check(layout, [0, 1, 2, 3], hkv=1, window=rng.randint(5, 25), label="window + bidirectional")


def test_sliding_window_causal():
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(10, 40) for _ in range(3)], text=(3, 20))
    check(layout, [3, 0, 2, 1], hkv=2, window=rng.randint(2, 30), config=MEDIUM, label="window")


def test_head_dim_256_and_64():
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(5, 30), rng.randint(5, 30)])
    check(layout, [3, 1], hkv=1, d=256, config=MEDIUM, probe=False, label="head_dim 256")
    check(layout, [2, 0], hkv=1, d=64, config=MEDIUM, probe=False, label="head_dim 64")


def test_large_image():
    """One image of up to 5000 tokens between small ones (its own range crosses many key blocks). The
    uniform probe cannot resolve one key among thousands, so this case checks random data only."""
    rng = random.Random(_seed())
    big = 5000 if GPU else rng.randint(1200, 2000)
    layout = random_layout(rng, [3, big, 1], text=(1, 40), sinks=SinkPolicy(kind="fraction", fraction=0.01))
    cfg = None if GPU else KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)
    check(layout, [2, 1], hkv=1, d=16, config=cfg, probe=False, label="large image")


def test_bad_inputs_are_named():
    layout = PromptLayout.from_segments([("text", 4), ("image", 8), ("text", 4)])
    meta = LayoutMeta.build(layout, DEVICE)
    q = torch.randn(4, 16, 32, device=DEVICE, dtype=torch.bfloat16)
    kv = torch.randn(2, 16, 32, device=DEVICE, dtype=torch.bfloat16)
    cats = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"categories\[2\] = 7"):
        blindsight_attention(q, kv, kv, meta, torch.tensor([0, 1, 7, 3]))
    with pytest.raises(ValueError, match="3 head categories for 4"):
        blindsight_attention(q, kv, kv, meta, cats[:3])
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        blindsight_attention(q.float(), kv.float(), kv.float(), meta, cats)
    with pytest.raises(ValueError, match="not a multiple"):
        blindsight_attention(q[:3], kv, kv, meta, cats[:3])
    with pytest.raises(ValueError, match="does not match the layout"):
        blindsight_attention(q[:, :15], kv[:, :15], kv[:, :15], meta, cats)
    with pytest.raises(NotImplementedError, match="head_dim 512"):
        big = torch.randn(4, 16, 512, device=DEVICE, dtype=torch.bfloat16)
        blindsight_attention(big, big[:2], big[:2], meta, cats)
    with pytest.raises(ValueError, match="sliding window"):
        blindsight_attention(q, kv, kv, meta, cats, window=0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        blindsight_attention(q, kv, kv, meta, cats, scale=-0.1)
    bidir = LayoutMeta.build(
        PromptLayout.from_segments([("text", 4), ("image", 8), ("text", 4)], bidirectional=True), DEVICE
    )
    with pytest.raises(ValueError, match="plain causal"):
        blindsight_attention(q, kv, kv, bidir, cats, dense_backend="sdpa")


@pytest.mark.parametrize("window", [None, 7])
def test_plan_covers_every_row_once(window: int | None):
    """Every query row in exactly one tile; image tiles inside one image; per-image columns from their image."""
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(1, 300) for _ in range(rng.randint(0, 12))], text=(0, 50))
    meta = LayoutMeta.build(layout, DEVICE)  # the plan is built by a Triton program on the tables' device
    bm = rng.choice([16, 32, 64])
    plan = build_plan(meta, bm, window)
    meta = LayoutMeta.build(layout)  # host copies for the checks below
    seen = torch.zeros(layout.length, dtype=torch.int64)
    starts, ends = meta.img_start.tolist(), meta.img_end.tolist()
    text_idx = meta.text_idx.tolist()
    per_image = list(
        zip(
            meta.text_before.tolist(),
            meta.glob_before.tolist(),
            (meta.sink_ptr[1:] - meta.sink_ptr[:-1]).tolist(),
            starts,
            meta.bidir_start.tolist(),
            meta.bidir_end.tolist(),
        )
    )
    for kind, a, cnt, img, lo_text, lo_glob, *image_cols, qmin, qmax, _, _ in plan.tiles.tolist():
        if kind < 0:
            assert cnt <= 0 and qmax < qmin, "an empty slot must give the kernel no rows and no keys"
            continue
        assert 1 <= cnt <= bm
        if kind == 0:
            seen[meta.text_idx[a : a + cnt].long()] += 1
            assert (qmin, qmax) == (text_idx[a], text_idx[a + cnt - 1])
            continue
        assert starts[img] <= a and a + cnt <= ends[img], "an image tile leaves its image"
        assert tuple(image_cols) == per_image[img], "per-image columns copied from the wrong image"
        assert (qmin, qmax) == (a, a + cnt - 1)
        seen[a : a + cnt] += 1
        if window is not None:  # first list entries inside the window of the tile's first row
            assert lo_text == int((meta.text_idx < a - window + 1).sum())
            assert lo_glob == int((meta.glob_idx < a - window + 1).sum())
    assert (seen == 1).all(), f"rows covered {seen.min().item()}..{seen.max().item()} times (bm={bm})"
    assert plan.num_tiles == plan.tiles.shape[0]
    work = [r[7] + r[13] - r[9] if r[0] == 1 else (r[13] if r[0] == 0 else -2) for r in plan.tiles.tolist()]
    assert work == sorted(work, reverse=True), "tiles not in longest-first order"


def test_sweep_layouts_and_counts_match_the_spec():
    """The sweep's prompts (peers.md layout), its mixed head map and its FLOP counts."""
    from bsight.harness.benchmarks.kernel_sweep import kept_pairs, make_layout, mixed_head_map
    from bsight.kernels.sparsity.masks import head_mask, materialize

    layout = make_layout(36_864)
    assert layout.length == 36_864 and layout.num_images == 35  # as in peers.md
    assert {s.length for s in layout.spans} == {1024}
    sizes = {s.length for s in make_layout(36_864, mixed_sizes=True).spans}
    assert min(sizes) >= 256 and max(sizes) <= 1600 and len(sizes) > 10
    cats = mixed_head_map(28)
    assert cats.count(Category.DENSE.value) == 8 and {cats.count(c.value) for c in Category if c.value} == {6, 7}
    rng = random.Random(_seed())
    small = random_layout(rng, [rng.randint(1, 30) for _ in range(4)])
    meta = LayoutMeta.build(small)
    want = materialize(head_mask(meta, torch.arange(4, dtype=torch.int32)), small.length, 4)
    assert [kept_pairs(meta, c) for c in Category] == want.sum(dim=(1, 2)).tolist()


def test_sweep_page_shows_speedups_and_verdicts():
    """The published page is rendered from the rows: speedups are cuDNN (or Flex) over ours, and each target's
    verdict follows its measured ratio (random times, so a swapped ratio or verdict shows)."""
    from bsight.harness.benchmarks.kernel_sweep import markdown, targets

    rng = random.Random(_seed())
    cudnn, ours, flex = rng.uniform(10, 20), rng.uniform(1, 3), rng.uniform(10, 20)
    rows = [
        {"tokens": 36_864, "layout": "peers", "images": 35, "method": m, "category": c, "ms": t}
        for m, c, t in (
            ("cudnn", "dense", cudnn),
            ("ours", "intra_image_sink", ours),
            ("flex", "intra_image_sink", flex),
        )
    ]
    doc = {
        "rows": rows,
        "targets": targets(rows),
        "provenance": {"gpu": "GPU", "git_commit": "0" * 40, "git_dirty": False, "command": ["x"]},
    }
    page = markdown(doc)
    speedups = page.split("## Speedups")[1].split("##")[0]
    assert f"| {cudnn / ours:.2f} |" in speedups and f"| {flex / ours:.2f} |" in speedups
    eight = next(t for t in doc["targets"] if t["target"].startswith("intra_image_sink >= 8x"))
    assert eight["met"] is (cudnn / ours >= 8.0)
    verdict = "yes" if eight["met"] else "**no**"
    assert f"| {eight['target']} | 36,864 | peers |  | {cudnn / ours:.3f} | 8.0 | {verdict} |" in page
    assert "| 301,056 | peers |  | - | 20.0 | not measured |" in page


def test_sweep_flex_path_traced_by_dynamo_matches_reference():
    """The sweep's FlexAttention path - block masks of the four categories from the segment table, one row per
    head picked for a head map, ``flex_attention`` traced by dynamo with static shapes (its eager backend here:
    the GPU compiles the same graph with inductor) - against the reference. Comparing a traced category with a
    ``Category`` member instead of its int value made dynamo fold it to a Python bool and fail; this traces the
    mask the sweep uses."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    from bsight.plugins.methods.flex import CategoryBlockMasks

    rng = random.Random(_seed())
    images = [rng.randint(20, 90) for _ in range(3)]
    S = 384  # three 128-row query blocks
    layout = PromptLayout.from_segments(
        [
            ("text", 5),
            ("image", images[0]),
            ("text", 7),
            ("image", images[1]),
            ("image", images[2]),
            ("text", S - 12 - sum(images)),
        ],
        sinks=SinkPolicy(kind="offsets", offsets=(0, 1, 2, 3)),
    )
    meta = LayoutMeta.build(layout)
    cats = mixed_categories(rng, 8)
    torch._dynamo.reset()
    masks = CategoryBlockMasks(meta, len(cats))
    q, k, v = torch.randn(8, S, 16), torch.randn(2, S, 16), torch.randn(2, S, 16)
    flex = torch.compile(flex_attention, backend="eager", dynamic=False)
    out = flex(q[None], k[None], v[None], block_mask=masks.for_heads(cats), enable_gqa=True)[0]
    ref = reference_attention(q, k, v, meta, torch.tensor(cats, dtype=torch.int32))
    assert torch.allclose(out, ref.to(out.dtype), atol=1e-4, rtol=1e-4), (
        f"max diff {(out - ref).abs().max().item():.2e}, cats={cats}"
    )


def _compiled_variants() -> int:
    """Compiled specializations of the attention kernel and the tile-plan kernel on the current device."""
    from bsight.harness.benchmarks.kernel_sweep import _compiled_variants as count

    return count()


@pytest.mark.skipif(not GPU, reason="full-size check needs a CUDA GPU (CPU runs the small cases above)")
@pytest.mark.parametrize("mixed_sizes", [False, True])
def test_full_size_on_gpu(mixed_sizes: bool):
    """36K tokens, Qwen2-VL-7B heads (28/4, d=128), every category in one head map, both sweep layouts."""
    from bsight.harness.benchmarks.kernel_sweep import make_layout

    layout = make_layout(36_864, mixed_sizes=mixed_sizes)
    cats = [0, 1, 2, 3] * 7
    random.Random(_seed()).shuffle(cats)
    check(layout, cats, hkv=4, d=128, config=None, dense_backend="auto", probe=False, label="full size")


@pytest.mark.skipif(not GPU, reason="compilation happens only on a GPU")
def test_new_length_compiles_nothing():
    """New lengths and image counts 1 to 5: the metadata tables (slices of one packed buffer) then start at
    every 4-byte offset mod 16, so a kernel specialized on a table's alignment would compile again."""
    rng = random.Random(_seed())
    cats = torch.tensor([1, 2, 3, 0], dtype=torch.int32)
    counts = []
    for n_images in (1, 2, 3, 4, 5):
        layout = random_layout(rng, [rng.randint(100, 900) for _ in range(n_images)], text=(1, 99))
        meta = LayoutMeta.build(layout, DEVICE)
        q = torch.randn(4, layout.length, 128, device=DEVICE, dtype=torch.bfloat16)
        kv = torch.randn(1, layout.length, 128, device=DEVICE, dtype=torch.bfloat16)
        blindsight_attention(q, kv, kv, meta, cats, dense_backend="kernel")
        torch.cuda.synchronize()
        counts.append(_compiled_variants())
    assert counts[0] == counts[-1], f"compiled variants grew with new lengths: {counts}"


def test_register_capped_config():
    """``maxnreg`` (two programs per SM on an H100 at 128 registers, 8 warps) computes the same attention."""
    rng = random.Random(_seed())
    layout = random_layout(rng, [rng.randint(1, 60) for _ in range(4)])
    cfg = KernelConfig(128, 32, 8, 3, maxnreg=128) if GPU else KernelConfig(16, 16, 4, 1, maxnreg=128)
    check(layout, mixed_categories(rng, 4), hkv=1, config=cfg, label="register-capped config")
