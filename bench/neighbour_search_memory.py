"""Memory and time of the nearest-neighbour search over fc7 features at ImageNet scale.

    python bench/neighbour_search_memory.py                      # 1,281,167 x 4096: a 10.5 GB file
    python bench/neighbour_search_memory.py --dimension 512      # smaller file, same rows

Writes a float16 (rows, dimension) .npy as evaluate.py --figures does (open_memmap for the
header, rows appended through a plain file), then searches it for 6 queries and reports the
growth of the peak resident memory (VmHWM, reset before the search) and the time taken.
"""

import argparse
import pathlib
import tempfile
import time

import numpy as np

import common  # makes alexnet_keras importable

from alexnet_keras import feature_cache, neighbour_figure


def resident_megabytes(field):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_281_167, help="training images")
    parser.add_argument("--dimension", type=int, default=4096, help="features per image")
    parser.add_argument("--folder", help="where to write the file (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = pathlib.Path(folder) / feature_cache.FEATURES_FILE
        header = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float16, shape=(args.rows, args.dimension)
        )
        offset = header.offset
        del header
        rng = np.random.default_rng(0)
        pattern = rng.random((8192, args.dimension), np.float32).astype(np.float16)
        start = time.perf_counter()
        with open(path, "r+b") as handle:
            handle.seek(offset)
            for first in range(0, args.rows, len(pattern)):
                count = min(len(pattern), args.rows - first)
                # fc7 is non-negative (after ReLU); a shifted pattern keeps rows distinct.
                handle.write((pattern[:count] + np.float16(first % 7)).tobytes())
        write_seconds = time.perf_counter() - start
        queries = rng.random((neighbour_figure.NUM_QUERIES, args.dimension), np.float32)
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        before = resident_megabytes("VmRSS")
        start = time.perf_counter()
        neighbour_figure.nearest_neighbours(queries.astype(np.float16), path)
        search_seconds = time.perf_counter() - start
        results = {
            "rows": args.rows,
            "dimension": args.dimension,
            "file_gb": path.stat().st_size / 1e9,
            "block_rows": neighbour_figure.SEARCH_BLOCK_ROWS,
            "write_seconds": write_seconds,
            "search_seconds": search_seconds,
            "resident_before_mb": before,
            "peak_growth_during_search_mb": resident_megabytes("VmHWM") - before,
        }
    common.print_results(results)


if __name__ == "__main__":
    main()
