"""Data-parallel demonstration: one config run by one process and by ``torchrun`` with N processes, rows compared.

The model is the example plugin's random-weight tiny Llama, placed on this process's device (``cuda:<LOCAL_RANK>``
under torchrun, so nccl joins the ranks; CPU and gloo where there is no GPU). Its answers exercise the pipeline;
they are not accuracy. From the repository root, with bsight installed (``pip install -e . --no-deps
--no-build-isolation``)::

    python3 tests/ext_plugin/dp_demo.py --nproc 2 --out "$OUT"

prints one line per unit and a verdict, writes ``dp_demo.json`` and both run folders under ``--out``, and exits
0 when the N-process rows equal the one-process rows (generations, answers, scores, order).

Imported by bsight's plugin loader (entry point ``dp_demo``, which this script registers for its child
processes), the module provides the model adapter ``tiny-llama-device``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bsight_tinyext.model import TinyLlama, TinyLlamaOptions
from pydantic import Field

from bsight.harness.hookspecs import hookimpl
from bsight.harness.interfaces import Prepared, Sample

HERE = Path(__file__).resolve().parent
TIMING = {"prefill_s", "total_s", "overhead_ms"}  # wall-clock fields, expected to differ between runs


class DeviceOptions(TinyLlamaOptions):
    device: str = Field("auto", description='"auto": this process\'s current CUDA device if any, else cpu')


class TinyLlamaOnDevice(TinyLlama):
    name = "tiny-llama-device"
    description = "The example tiny Llama (random weights) on a chosen device; for the data-parallel demonstration"
    Options = DeviceOptions

    @property
    def device(self) -> torch.device:
        if self.options.device != "auto":
            return torch.device(self.options.device)
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def load(self) -> None:
        super().load()
        self.model.to(self.device)

    def prepare(self, sample: Sample, continuation: str | None = None) -> Prepared:
        prepared = super().prepare(sample, continuation)
        return Prepared({k: v.to(self.device) for k, v in prepared.inputs.items()}, prepared.layouts)


@hookimpl
def bsight_model_adapters():
    return [TinyLlamaOnDevice]


def _plugin_site(root: Path) -> Path:
    """A folder that registers the example plugin and this module under the ``bsight`` entry-point group."""
    info = root / "bsight_dp_demo-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bsight-dp-demo\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[bsight]\ntinyext = bsight_tinyext\ndp_demo = dp_demo\n")
    return root


def _config(out: Path, samples: int) -> dict:
    return {
        "run": {"name": "dp-demo", "output_dir": str(out), "seed": 0},
        "models": {
            "tiny": {
                "plugin": "tiny-llama-device",
                "options": {"layers": 4, "heads": 8, "kv_heads": 4, "head_dim": 32, "image_grid": 6},
            }
        },
        "methods": {
            "dense": {"plugin": "dense"},
            "sw": {"plugin": "sink-window", "options": {"sinks": 4, "window": 24}},
        },
        "tasks": {"bright": {"plugin": "brightest-image", "options": {"n": samples, "max_images": 6}}},
        "jobs": [{"type": "accuracy", "max_new_tokens": 8}],
    }


def _rows(run_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sorted((run_dir / "results").rglob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[path.name] = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    return out


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (one per GPU)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "dp-demo-out")))
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on CPU (gloo) when fewer GPUs than --nproc are visible"
    )
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if gpus < args.nproc and not args.allow_cpu:
        print(
            f"dp_demo: {gpus} GPU(s) visible, --nproc {args.nproc} needs as many (or pass --allow-cpu)", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    cfg = args.out / "dp_demo.yaml"
    cfg.write_text(json.dumps(_config(runs, args.samples), indent=1))  # JSON is YAML
    cli = ["-m", "bsight.harness.cli", "run", str(cfg), "--fresh"]
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        *cli,
        "--out",
        str(runs / "many"),
    ]
    with tempfile.TemporaryDirectory(prefix="bsight-dp-demo-") as tmp:
        env = dict(os.environ)
        for name, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
            env.setdefault(name, value)  # no NVLink multicast: nothing here needs it, and shared GPU hosts forbid it
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_plugin_site(Path(tmp))), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        rc1, t1 = _run([sys.executable, *cli, "--out", str(runs / "one")], env, args.out / "one.log")
        rcn, tn = _run(launch, env, args.out / "many.log")
    result: dict = {
        "weights": "random (answers are not accuracy)",
        "torch": torch.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "nproc": args.nproc,
        "samples_per_unit": args.samples,
        "exit_status": {"one": rc1, "many": rcn},
        "wall_s": {"one": round(t1, 2), "many": round(tn, 2)},
    }
    if rc1 == 0 and rcn == 0:
        one, many = _rows(runs / "one"), _rows(runs / "many")
        session = json.loads((runs / "many" / "provenance.json").read_text())["sessions"][-1]
        result["world_size"], result["devices"] = session["world_size"], session["devices"]
        result["one_process_devices"] = json.loads((runs / "one" / "provenance.json").read_text())["sessions"][-1][
            "devices"
        ]
        result["units"] = []
        for name, rows in one.items():
            other = many.get(name, [])
            result["units"].append(
                {
                    "unit": name,
                    "rows_one": len(rows),
                    "rows_many": len(other),
                    "same_order": [r["key"] for r in rows] == [r["key"] for r in other],
                    "identical_rows": sum(a == b for a, b in zip(rows, other)),
                    "correct_one": sum(r["correct"] for r in rows),
                    "correct_many": sum(r["correct"] for r in other),
                }
            )
        result["leftover_shards"] = [str(p.relative_to(runs)) for p in runs.rglob("*.shards")]
        result["all_identical"] = one == many and not result["leftover_shards"]
    else:
        result["all_identical"] = False
        result["logs"] = {k: (args.out / f"{k}.log").read_text()[-3000:] for k in ("one", "many")}
    (args.out / "dp_demo.json").write_text(json.dumps(result, indent=2))
    print(
        f"1 process: exit {rc1}, {t1:.1f} s; {args.nproc} processes: exit {rcn}, {tn:.1f} s; devices "
        f"{result.get('devices')}"
    )
    for u in result.get("units", []):
        print(
            f"  {u['unit']}: {u['identical_rows']}/{u['rows_one']} rows identical, same order: {u['same_order']}, "
            f"rows {u['rows_one']} vs {u['rows_many']}"
        )
    print(
        f"rows identical: {result['all_identical']} (random-weight model: not accuracy) -> {args.out / 'dp_demo.json'}"
    )
    return 0 if result["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
