"""Parquet reading speed and memory: canvaslab's ParquetStream against the pandas loop of reproduction scripts.

Same files, same run. The files are generated in a temporary folder: --rows rows (default 200k) in
--files files, row groups of --row-group rows, columns `label` (int), `caption` (a 10-60 word
sentence from a 5000-word vocabulary, ~210 characters on average) and `image` (1-4 kB of random
bytes standing in for encoded image bytes, incompressible like JPEG).

Named baseline: the loop Show-o style reproduction scripts use,

    for i in range(pf.num_row_groups):
        for row in pf.read_row_group(i).to_pandas().to_dict("records"): ...

Modes:
- rows: one Python dict per row, the consumer reads `row["label"]`. Baseline: the loop above;
  ours: `ParquetStream(files, shuffle=False)`; also ours with a 10k-row shuffle buffer (its cost).
- batched: 256 captions at a time handed to a batched tokenizer, a byte-level one (ByT5's scheme:
  UTF-8 bytes + 3, at most 128 ids) vectorised in pyarrow.compute. Baseline: the loop above, rows
  collected into lists of 256 captions; ours: `ParquetStream(files, columns=["caption", "label"],
  batch_size=256, shuffle=False)` handing the Arrow column over.
- batched, words: the same with a heavier word-level tokenizer (lower-case, split on spaces, look
  each word up in the 5000-word vocabulary; also pyarrow.compute). Its cost is the same on both
  sides, so the ratio shrinks as the tokenizer's share grows.
  With --hf-tokenizer, also both with a `tokenizers` WordLevel tokenizer (`encode_batch` wants Python
  strings, so both sides convert; the tokenizer then dominates).
- ceilings: pyarrow `iter_batches` (one row group per call) over all columns / over the two
  batched-mode columns, no Python per row.

Every measurement runs in its own subprocess (so one method's peak memory does not inflate another's),
timed from the first read to the last row (imports excluded), with pyarrow limited to --threads
threads (default 1: one core). Peak memory is the process's peak RSS (VmHWM) and the same minus
the RSS before reading (interpreter + imports). Methods run interleaved, --repeats times;
figures are medians (and the best run), ratios medians of the per-repeat ratios (and of the best runs).

    python benchmarks/data.py [--rows 200000] [--files 4] [--row-group 10000] [--repeats 5] [--threads 1] [--hf-tokenizer]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 256
SHUFFLE_BUFFER = 10_000
VOCABULARY = 5000
METHODS = {
    # name: (mode, label)
    "arrow-all": ("ceiling", "pyarrow iter_batches, all columns"),
    "arrow-projected": ("ceiling", "pyarrow iter_batches, caption + label"),
    "pandas-rows": ("rows", "pandas read_row_group().to_pandas().to_dict('records') (baseline)"),
    "ours-rows": ("rows", "ParquetStream, one dict per row"),
    "ours-rows-shuffled": ("rows", f"ParquetStream, one dict per row, shuffle buffer {SHUFFLE_BUFFER}"),
    "pandas-batched": ("batched", "pandas loop, lists of 256 captions -> byte tokenizer (baseline)"),
    "ours-batched": ("batched", "ParquetStream batch_size=256, caption + label -> byte tokenizer"),
    "pandas-batched-words": ("batched, words", "pandas loop, lists of 256 captions -> word tokenizer (baseline)"),
    "ours-batched-words": ("batched, words", "ParquetStream batch_size=256, caption + label -> word tokenizer"),
}
HF_METHODS = {
    "pandas-batched-hf": ("batched-hf", "pandas loop, lists of 256 captions -> tokenizers encode_batch (baseline)"),
    "ours-batched-hf": ("batched-hf", "ParquetStream batch_size=256 -> to_pylist -> tokenizers encode_batch"),
}
RATIOS = [
    ("rows: ours / pandas", "ours-rows", "pandas-rows", 2.0),
    ("rows, shuffled: ours / pandas", "ours-rows-shuffled", "pandas-rows", None),
    ("batched: ours / pandas", "ours-batched", "pandas-batched", 4.0),
    ("batched, word tokenizer: ours / pandas", "ours-batched-words", "pandas-batched-words", None),
    ("batched, tokenizers: ours / pandas", "ours-batched-hf", "pandas-batched-hf", None),
    ("ceiling (all columns) / ours rows", "arrow-all", "ours-rows", None),
    ("ceiling (projected) / ours batched", "arrow-projected", "ours-batched", None),
]


# --- data --------------------------------------------------------------------------------------


def words() -> list[str]:
    """A fixed vocabulary of pronounceable made-up words (2-9 letters)."""
    import numpy as np

    rng = np.random.default_rng(0)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < VOCABULARY:
        word = "".join(rng.choice(syllables, size=int(rng.integers(1, 5))))[: int(rng.integers(2, 10))]
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    return vocab


def generate(root: Path, rows: int, files: int, row_group: int) -> list[Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    vocab = np.array(words())
    rng = np.random.default_rng(1)
    paths = []
    per_file = -(-rows // files)
    for number in range(files):
        count = min(per_file, rows - number * per_file)
        lengths = rng.integers(10, 61, count)
        # Zipf-like word choice, so common words repeat as in real captions
        picks = np.minimum(rng.zipf(1.3, lengths.sum()) - 1, VOCABULARY - 1)
        tokens = vocab[picks]
        ends = np.cumsum(lengths)
        captions = [" ".join(tokens[end - length : end]).capitalize() + "." for end, length in zip(ends, lengths)]
        sizes = rng.integers(1024, 4097, count)
        blob = rng.bytes(int(sizes.sum()))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        images = pa.BinaryArray.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(blob)])
        table = pa.table({"label": rng.integers(0, 1000, count), "caption": captions, "image": images})
        path = root / f"train-{number:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group)
        paths.append(path)
    return paths


# --- tokenizers ---------------------------------------------------------------------------------


def _as_arrow(captions):
    import pyarrow as pa

    array = captions if isinstance(captions, (pa.Array, pa.ChunkedArray)) else pa.array(captions, pa.string())
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def byte_tokenizer(max_ids: int = 128):
    """Batched byte-level tokenizer (ByT5: id = UTF-8 byte + 3) in pyarrow.compute: captions -> ListArray of ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def tokenize(captions):
        cut = pc.binary_slice(_as_arrow(captions).cast(pa.binary()), 0, max_ids)
        _, offsets, data = cut.buffers()
        offsets = pa.Array.from_buffers(pa.int32(), len(cut) + 1, [None, offsets], offset=cut.offset)
        values = pa.Array.from_buffers(pa.uint8(), offsets[-1].as_py(), [None, data])
        return pa.ListArray.from_arrays(offsets, pc.add(values.cast(pa.int32()), pa.scalar(3, pa.int32())))

    return tokenize


def word_tokenizer():
    """Batched word-level tokenizer in pyarrow.compute: captions (Arrow array or list) -> ListArray of ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vocab = pa.array(words())
    unknown = len(vocab)

    def tokenize(captions):
        pieces = pc.split_pattern(pc.utf8_lower(pc.replace_substring(_as_arrow(captions), ".", "")), " ")
        ids = pc.fill_null(pc.index_in(pc.list_flatten(pieces), value_set=vocab), unknown)
        return pa.ListArray.from_arrays(pieces.offsets, ids)

    return tokenize


def hf_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {word: index for index, word in enumerate(words())}
    vocab["[UNK]"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return lambda texts: tokenizer.encode_batch(texts)


# --- one measurement (in its own process) -----------------------------------------------------


def memory_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that over exec from the
    parent, so every worker would report at least the generating process's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def pandas_rows(files):
    import pyarrow.parquet as pq

    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group).to_pandas().to_dict("records")


def measure(method: str, files: list[str]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from canvaslab.data.streaming import ParquetStream

    tokenize = {"hf": hf_tokenizer, "words": word_tokenizer}.get(method.rsplit("-", 1)[-1], byte_tokenizer)()
    tokenize(["warm up"])
    start_rss = memory_bytes("VmRSS")
    rows, checksum = 0, 0
    started = time.perf_counter()
    if method in ("arrow-all", "arrow-projected"):
        columns = None if method == "arrow-all" else ["caption", "label"]
        for path in files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):  # one at a time, as ParquetStream reads them
                for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=columns):
                    rows += len(batch)
    elif method == "pandas-rows":
        for row in pandas_rows(files):
            checksum += row["label"]
            rows += 1
    elif method in ("ours-rows", "ours-rows-shuffled"):
        buffer = SHUFFLE_BUFFER if method == "ours-rows-shuffled" else 0
        for row in ParquetStream(files, shuffle=False, shuffle_buffer=buffer):
            checksum += row["label"]
            rows += 1
    elif method.startswith("pandas-batched"):
        captions: list[str] = []
        for row in pandas_rows(files):
            captions.append(row["caption"])
            if len(captions) == BATCH:
                rows += len(captions)
                checksum += len(tokenize(captions))
                captions = []
        if captions:
            rows += len(captions)
            checksum += len(tokenize(captions))
    elif method.startswith("ours-batched"):
        as_python = method.endswith("-hf")
        for batch in ParquetStream(files, columns=["caption", "label"], batch_size=BATCH, shuffle=False):
            column = batch.column("caption")
            checksum += len(tokenize(column.to_pylist() if as_python else column))
            rows += len(batch)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - started
    peak = memory_bytes("VmHWM")
    return {"method": method, "rows": rows, "seconds": seconds, "peak_mb": peak / 2**20,
            "above_start_mb": (peak - start_rss) / 2**20, "checksum": int(checksum), "pyarrow": pa.__version__}


def run_worker(method: str, files: list[Path], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}
    command = [sys.executable, __file__, "--worker", method, "--threads", str(threads), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the comparison -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--row-group", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="pyarrow CPU threads in each measurement")
    parser.add_argument("--hf-tokenizer", action="store_true", help="also the batched mode with a `tokenizers` tokenizer")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import pyarrow as pa

        pa.set_cpu_count(args.threads)
        pa.set_io_thread_count(args.threads)
        print(json.dumps(measure(args.worker, args.paths)))
        return

    methods = {**METHODS, **(HF_METHODS if args.hf_tokenizer else {})}
    with tempfile.TemporaryDirectory(prefix="canvaslab-bench-data-") as folder:
        began = time.perf_counter()
        files = generate(Path(folder), args.rows, args.files, args.row_group)
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"{args.rows} rows in {args.files} files ({size:.0f} MB, row groups of {args.row_group}), "
              f"generated in {time.perf_counter() - began:.1f} s; pyarrow threads: {args.threads}", flush=True)
        run_worker("arrow-all", files, args.threads)  # warm the page cache
        results: dict[str, list[dict]] = {name: [] for name in methods}
        names = list(methods)
        for repeat in range(args.repeats):
            turn = names[repeat % len(names):] + names[: repeat % len(names)]  # rotate: no method always first
            for name in turn:
                result = run_worker(name, files, args.threads)
                if result["rows"] != args.rows:
                    raise SystemExit(f"{name} read {result['rows']} rows, not {args.rows}")
                results[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        report(results, methods, args)


def report(results: dict[str, list[dict]], methods: dict, args: argparse.Namespace) -> None:
    """Median figures, the best run's rate (least disturbed by other processes), and paired ratios."""
    print()
    print("| mode | method | rows/s (median) | rows/s (best) | peak RSS MB | above start MB |")
    print("|---|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        mode, label = methods[name]
        rates = [r["rows"] / r["seconds"] for r in runs]
        peak = statistics.median(r["peak_mb"] for r in runs)
        above = statistics.median(r["above_start_mb"] for r in runs)
        print(f"| {mode} | {label} | {statistics.median(rates):,.0f} | {max(rates):,.0f} | {peak:.0f} | {above:.0f} |")
    print()
    for label, ours, baseline, goal in RATIOS:
        if ours not in results or baseline not in results:
            continue
        ratios = [b["seconds"] / a["seconds"] for a, b in zip(results[ours], results[baseline])]
        best = min(b["seconds"] for b in results[baseline]) / min(a["seconds"] for a in results[ours])
        verdict = "" if goal is None else f"; goal >= {goal:g}: {'met' if statistics.median(ratios) >= goal else 'NOT met'}"
        print(f"{label}: {statistics.median(ratios):.2f}x (paired {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"best runs {best:.2f}x{verdict})")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
