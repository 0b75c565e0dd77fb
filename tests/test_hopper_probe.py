"""The Hopper probe (:mod:`bsight.harness.benchmarks.hopper_probe`): its kernel variants compute what they claim (under
Triton's interpreter here, compiled on a GPU), and its compile-only report runs without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bsight.harness.benchmarks import hopper_probe
from bsight.harness.benchmarks.hopper_probe import SHAPES, TIMED, Variant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _cases() -> list:
    """Every timed variant, and the one-loop masked shape. On a GPU, the plain loop (the shape Triton does
    warp-specialize) with 3 stages is expected to fail: Triton 3.6 on an H100 returned non-finite outputs for it
    (the probe reports this). The masked shape asks for specialization too but does not get it: it passes."""
    miscompiled = pytest.mark.xfail(
        reason="Triton 3.6, H100: warp-specialized loop with 3 stages returns non-finite outputs "
        "(kernels/NOTES.md, round 4)"
    )

    def expected_to_fail(v: Variant) -> bool:
        return DEVICE == "cuda" and v.warp_specialize and v.num_stages > 2 and not v.causal

    return [pytest.param(v, id=v.name, marks=[miscompiled] if expected_to_fail(v) else []) for v in TIMED + SHAPES[3:4]]


@pytest.mark.parametrize("variant", _cases())
def test_probe_variant_matches_its_mask(variant: Variant) -> None:
    """Causal variants against causal attention; full-block variants against keys before each 128-row tile."""
    import triton

    seed = int(torch.randint(0, 2**31, ()).item())
    torch.manual_seed(seed)
    H, KV, S, D = 4, 2, 384, hopper_probe.HEAD_DIM
    q, k, v = (torch.randn(h, S, D, dtype=torch.float16, device=DEVICE) for h in (H, KV, KV))
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=DEVICE))
    out = torch.full_like(q, float("nan"))
    hopper_probe._launch(variant, q, k, v, out)
    rows = torch.arange(S)[:, None]
    keys = torch.arange(S)[None, :]
    mask = keys <= rows if variant.causal else keys < rows // 128 * 128
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float().cpu(),
        k.float().cpu().repeat_interleave(H // KV, 0),
        v.float().cpu().repeat_interleave(H // KV, 0),
        attn_mask=mask,
    )
    checked = slice(0, S) if variant.causal else slice(128, S)  # tile 0 has no full block
    got = out[:, checked].float().cpu()
    err = ((got - expected[:, checked]).abs().max() / expected[:, checked].abs().max()).item()
    assert err < 1e-2, f"seed {seed}: max relative error {err:.2e}"
    if not variant.causal:
        assert (out[:, :128] == 0).all(), "tile 0 of a full-block variant must be written as zeros"


def test_full_block_pairs_counts_keys_before_each_tile() -> None:
    assert hopper_probe.full_block_pairs(384) == 128 * (0 + 128 + 256)


def test_compile_only_report_without_gpu(tmp_path) -> None:
    """The command a maintainer runs after a Triton upgrade: every shape compiled for an H100 (sm_90) and
    reported; the plain loop, the reference shape, gets warp-specialized code (else the probe's premise,
    Triton's Hopper warp specialization, is gone and the notes need a new look)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bsight.harness.benchmarks.hopper_probe",
            "--compile-only",
            "--target",
            "90",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    shapes = {s["name"]: s for s in doc["shapes"]}
    assert set(shapes) == {v.name for v in SHAPES}
    assert shapes[SHAPES[0].name]["compiled"] and shapes[SHAPES[0].name]["warp_specialized"]
    for s in doc["shapes"]:
        assert s["compiled"] or s["error"], s
        assert s["name"] in proc.stdout
    assert doc["rows"] == [] and doc["provenance"]["command"][:3] == [
        "python",
        "-m",
        "bsight.harness.benchmarks.hopper_probe",
    ]
    assert str(tmp_path) not in json.dumps(doc["provenance"]), "published provenance must not name this machine's paths"


def test_run_returns_the_document_the_cli_writes(tmp_path, monkeypatch, capsys) -> None:
    """``run(spec)`` returns the document the CLI writes (compilation faked: the command above compiles)."""
    monkeypatch.setattr(
        hopper_probe, "compile_report", lambda v, target=None: {"compiled": True, "warp_specialized": False}
    )
    lines: list[str] = []
    doc = hopper_probe.run(hopper_probe.ProbeSpec(compile_only=True, target=90), log=lines.append)
    out = tmp_path / "probe.json"
    written = hopper_probe.main(["--compile-only", "--target", "90", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(written, default=str))
    assert doc.keys() == written.keys() == {"provenance", "setup", "shapes", "rows"}
    assert doc["setup"] == written["setup"] and doc["shapes"] == written["shapes"] and doc["rows"] == []
    assert doc["provenance"].keys() == written["provenance"].keys()
    assert doc["provenance"]["command"] == ["bsight.harness.benchmarks.hopper_probe.run"]
    assert written["provenance"]["command"][-2:] == ["--out", "probe.json"]
    assert len(lines) == len(SHAPES) and lines == capsys.readouterr().out.splitlines()
