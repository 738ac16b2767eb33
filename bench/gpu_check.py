"""The CUDA path, ready to measure on a GPU machine: bench_full_resolution.py on `cuda`,
20 training steps of the teacher, its mask generators and both distilled students at the
`nuscenes` preset (bf16 autocast, as `vexkd-train` uses on CUDA), at batch 1 and the
preset's batch 4, then inference of every model. Records step time and peak GPU memory in
bench/results/gpu.json. CI never runs it; without a GPU it says so and exits 2.

    python bench/gpu_check.py [--steps 20] [--batch-sizes 1 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device visible to torch; run it on a GPU machine", file=sys.stderr)
        return 2
    import bench_full_resolution

    sys.argv = [sys.argv[0], "--device", "cuda", "--steps", str(args.steps), "--batch-sizes",
                *map(str, args.batch_sizes), "--results", str(REPO / "bench" / "results" / "gpu.json")]
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    bench_full_resolution.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
