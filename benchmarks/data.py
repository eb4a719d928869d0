"""Parquet reading speed and memory: canvaslab's ParquetStream against pandas loops and plain pyarrow.

Same files, same run. Two file sets are generated in a temporary folder:

- captions: --rows rows (default 200k) in --files files, row groups of --row-group rows, columns
  `label` (int), `caption` (a 10-60 word sentence from a 5000-word vocabulary, ~210 characters on
  average) and `image` (1-4 kB of random bytes standing in for encoded image bytes,
  incompressible like JPEG);
- web text, shaped like RefinedWeb: --text-rows rows (default 120k) in --text-files files, row
  groups of --text-row-group rows (default 15k, ~37 MB of text: web-text parquet files commonly
  hold 32-128 MB row groups), columns `content` (a page of Zipf-drawn words, log-normal length:
  median ~1,600 characters, mean ~2,000, 150-16,000), `url`, `timestamp` (timestamp[s]), `dump`
  and `segment` (Common Crawl crawl and segment names), as in RefinedWeb (its `image_urls` lists
  are left out).

Named baselines:
- pandas, all columns: the loop Show-o style reproduction scripts use,

      for i in range(pf.num_row_groups):
          for row in pf.read_row_group(i).to_pandas().to_dict("records"): ...

- pandas, needed columns (the fair one): the same loop reading only the columns the consumer uses,
  `pf.read_row_group(i, columns=[...])`;
- pyarrow: the plain loop `for batch in pf.iter_batches(batch_size=256, columns=[...])` per file,
  handing each Arrow column over: what ParquetStream should cost next to nothing over.

Modes:
- rows (captions): one Python dict per row, the consumer reads `row["label"]`. Baseline: pandas,
  all columns; ours: `ParquetStream(files, shuffle=False)`; also ours with a 10k-row shuffle buffer.
- batched (captions): 256 captions at a time handed to a batched tokenizer, a byte-level one
  (ByT5's scheme: UTF-8 bytes + 3, at most 128 ids) vectorised in pyarrow.compute. Pandas loops:
  rows collected into lists of 256 captions; ours: `ParquetStream(files, columns=["caption",
  "label"], batch_size=256, shuffle=False)` handing the Arrow column over; pyarrow: the plain loop
  over the same two columns.
- batched, words (captions): the same with a heavier word-level tokenizer (lower-case, split on
  spaces, look each word up in the 5000-word vocabulary; also pyarrow.compute). Its cost is the same
  on both sides, so the ratio shrinks as the tokenizer's share grows.
  With --hf-tokenizer, also both with a `tokenizers` WordLevel tokenizer (`encode_batch` wants Python
  strings, so both sides convert; the tokenizer then dominates).
- text (web text): 256 pages at a time to the byte tokenizer, reading `content` only (ours:
  `ParquetStream(files, columns=["content"], batch_size=256, shuffle=False)`), against the three
  baselines.
- ceilings: pyarrow `iter_batches` (one row group per call) over all columns / over the two
  batched-mode columns of the captions, and over `content` of the web text; no Python per row and
  no consumer: decoding alone, which bounds what any reader can gain over the pandas loops.

Every measurement runs in its own subprocess (so one method's peak memory does not inflate another's),
timed from the first read to the last row (imports excluded), with pyarrow limited to --threads
threads (default 1: one core). Peak memory is the process's peak RSS (VmHWM) and the same minus
the RSS before reading (interpreter + imports). Methods run interleaved, --repeats times;
figures are medians (and the best run), ratios medians of the per-repeat ratios, by CPU seconds
(user + sys of the measuring process, the fairer figure on a shared machine) and by wall seconds.

    python benchmarks/data.py [--rows 200000] [--files 4] [--row-group 10000] [--text-rows 120000]
        [--text-files 4] [--text-row-group 15000] [--repeats 5] [--threads 1] [--hf-tokenizer] [--only text]
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
CAPTION_COLUMNS = ["caption", "label"]
TEXT_COLUMNS = ["content"]
METHODS = {
    # name: (file set, mode, label)
    "arrow-all": ("captions", "ceiling", "pyarrow iter_batches, all columns"),
    "arrow-projected": ("captions", "ceiling", "pyarrow iter_batches, caption + label"),
    "pandas-rows": ("captions", "rows", "pandas read_row_group().to_pandas().to_dict('records') (baseline)"),
    "ours-rows": ("captions", "rows", "ParquetStream, one dict per row"),
    "ours-rows-shuffled": ("captions", "rows", f"ParquetStream, one dict per row, shuffle buffer {SHUFFLE_BUFFER}"),
    "pandas-batched": ("captions", "batched", "pandas loop, all columns -> byte tokenizer (baseline)"),
    "pandas-batched-needed": ("captions", "batched", "pandas loop, caption + label only -> byte tokenizer (fair baseline)"),
    "arrow-batched": ("captions", "batched", "pyarrow iter_batches(256), caption + label -> byte tokenizer (baseline)"),
    "ours-batched": ("captions", "batched", "ParquetStream batch_size=256, caption + label -> byte tokenizer"),
    "pandas-batched-words": ("captions", "batched, words", "pandas loop, all columns -> word tokenizer (baseline)"),
    "pandas-batched-needed-words": ("captions", "batched, words", "pandas loop, caption + label only -> word tokenizer (fair baseline)"),
    "ours-batched-words": ("captions", "batched, words", "ParquetStream batch_size=256, caption + label -> word tokenizer"),
    "text-arrow-projected": ("text", "ceiling", "pyarrow iter_batches, content, no consumer"),
    "text-pandas-batched": ("text", "text", "pandas loop, all columns -> byte tokenizer (baseline)"),
    "text-pandas-batched-needed": ("text", "text", "pandas loop, content only -> byte tokenizer (fair baseline)"),
    "text-arrow-batched": ("text", "text", "pyarrow iter_batches(256), content -> byte tokenizer (baseline)"),
    "text-ours-batched": ("text", "text", "ParquetStream batch_size=256, content -> byte tokenizer"),
}
HF_METHODS = {
    "pandas-batched-hf": ("captions", "batched-hf", "pandas loop, lists of 256 captions -> tokenizers encode_batch (baseline)"),
    "ours-batched-hf": ("captions", "batched-hf", "ParquetStream batch_size=256 -> to_pylist -> tokenizers encode_batch"),
}
# Goals (ours at least this many times as fast) stand where issues set them, on the all-columns
# loop; against the fair loop, long text is bound by decoding (the text ceiling line shows how far).
RATIOS = [
    # (label, ours, baseline, goal)
    ("rows: ours / pandas", "ours-rows", "pandas-rows", 2.0),
    ("rows, shuffled: ours / pandas", "ours-rows-shuffled", "pandas-rows", None),
    ("batched: ours / pandas, all columns", "ours-batched", "pandas-batched", 4.0),
    ("batched: ours / pandas, needed columns", "ours-batched", "pandas-batched-needed", None),
    ("batched: ours / pyarrow loop", "ours-batched", "arrow-batched", 0.95),
    ("batched, word tokenizer: ours / pandas, all columns", "ours-batched-words", "pandas-batched-words", None),
    ("batched, word tokenizer: ours / pandas, needed columns", "ours-batched-words", "pandas-batched-needed-words", None),
    ("batched, tokenizers: ours / pandas", "ours-batched-hf", "pandas-batched-hf", None),
    ("text: ours / pandas, all columns", "text-ours-batched", "text-pandas-batched", 4.0),
    ("text: ours / pandas, needed columns", "text-ours-batched", "text-pandas-batched-needed", None),
    ("text: ours / pyarrow loop", "text-ours-batched", "text-arrow-batched", 0.95),
    ("ceiling (all columns) / ours rows", "arrow-all", "ours-rows", None),
    ("ceiling (projected) / ours batched", "arrow-projected", "ours-batched", None),
    ("text ceiling (content, no consumer) / ours", "text-arrow-projected", "text-ours-batched", None),
    ("text: ceiling / pandas, needed columns (the most any reader can gain)", "text-arrow-projected",
     "text-pandas-batched-needed", None),
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


def generate_text(root: Path, rows: int, files: int, row_group: int) -> list[Path]:
    """Web-text files shaped like RefinedWeb (content, url, timestamp, dump, segment), built in pyarrow.compute."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    vocab = pa.array(words())
    rng = np.random.default_rng(2)
    dumps = pa.array([f"CC-MAIN-{year}-{week:02d}" for year in range(2013, 2024) for week in range(5, 53, 6)])
    segments = pa.array([f"{rng.integers(1.3e12, 1.7e12)}.{rng.integers(0, 99):02d}" for _ in range(500)])
    tlds = pa.array(["com", "org", "net", "de", "co.uk", "fr", "info", "io"])
    paths = []
    per_file = -(-rows // files)
    for number in range(files):
        count = min(per_file, rows - number * per_file)
        # Page length in words: log-normal, median 330 words (~1,600 characters), 33-3,300 words.
        lengths = np.clip(rng.lognormal(np.log(330), 0.7, count), 33, 3300).astype(np.int32)
        picks = np.minimum(rng.zipf(1.3, int(lengths.sum())) - 1, VOCABULARY - 1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        content = pc.binary_join(pa.ListArray.from_arrays(offsets, vocab.take(pa.array(picks))), " ")

        def word():
            return vocab.take(pa.array(rng.integers(0, VOCABULARY, count)))

        url = pc.binary_join_element_wise(
            "https://www.", word(), word(), ".", tlds.take(pa.array(rng.integers(0, len(tlds), count))), "/",
            word(), "/", word(), "-", pc.cast(pa.array(rng.integers(1, 10**6, count)), pa.string()), ".html", "")
        seconds = rng.integers(1_356_998_400, 1_700_000_000, count)  # 2013 to 2023
        table = pa.table({
            "content": content,
            "url": url,
            "timestamp": pa.array(seconds, pa.timestamp("s")),
            "dump": dumps.take(pa.array(rng.integers(0, len(dumps), count))),
            "segment": segments.take(pa.array(rng.integers(0, len(segments), count))),
        })
        path = root / f"refinedweb-{number:05d}.parquet"
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


def pandas_rows(files, columns=None):
    import pyarrow.parquet as pq

    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group, columns=columns).to_pandas().to_dict("records")


def measure(method: str, files: list[str]) -> dict:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from canvaslab.data.streaming import ParquetStream

    tokenize = {"hf": hf_tokenizer, "words": word_tokenizer}.get(method.rsplit("-", 1)[-1], byte_tokenizer)()
    tokenize(["warm up"])
    start_rss = memory_bytes("VmRSS")
    rows, checksum = 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    if method in ("arrow-all", "arrow-projected", "text-arrow-projected"):
        columns = {"arrow-all": None, "arrow-projected": CAPTION_COLUMNS, "text-arrow-projected": TEXT_COLUMNS}[method]
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
    elif method.removeprefix("text-").startswith("pandas-batched"):
        columns = TEXT_COLUMNS if method.startswith("text-") else CAPTION_COLUMNS
        texts: list[str] = []
        for row in pandas_rows(files, columns if "-needed" in method else None):
            texts.append(row[columns[0]])
            if len(texts) == BATCH:
                rows += len(texts)
                checksum += len(tokenize(texts))
                texts = []
        if texts:
            rows += len(texts)
            checksum += len(tokenize(texts))
    elif method.removeprefix("text-").startswith("arrow-batched"):
        columns = TEXT_COLUMNS if method.startswith("text-") else CAPTION_COLUMNS
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=columns):
                checksum += len(tokenize(batch.column(columns[0])))
                rows += len(batch)
    elif method.removeprefix("text-").startswith("ours-batched"):
        columns = TEXT_COLUMNS if method.startswith("text-") else CAPTION_COLUMNS
        as_python = method.endswith("-hf")
        for batch in ParquetStream(files, columns=columns, batch_size=BATCH, shuffle=False):
            column = batch.column(columns[0])
            checksum += len(tokenize(column.to_pylist() if as_python else column))
            rows += len(batch)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = memory_bytes("VmHWM")
    return {"method": method, "rows": rows, "seconds": seconds, "cpu": cpu, "peak_mb": peak / 2**20,
            "above_start_mb": (peak - start_rss) / 2**20, "checksum": int(checksum), "pyarrow": pa.__version__,
            "pandas": pd.__version__}


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
    parser.add_argument("--text-rows", type=int, default=120_000, help="rows of the RefinedWeb-like web-text set")
    parser.add_argument("--text-files", type=int, default=4)
    parser.add_argument("--text-row-group", type=int, default=15_000)
    parser.add_argument("--only", default="", help="comma-separated method names, or 'text'/'captions' for a file set")
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
    if args.only:
        wanted = set(args.only.split(","))
        methods = {name: spec for name, spec in methods.items() if name in wanted or spec[0] in wanted}
    sets = {spec[0] for spec in methods.values()}
    with tempfile.TemporaryDirectory(prefix="canvaslab-bench-data-") as folder:
        files: dict[str, list[Path]] = {}
        expected = {"captions": args.rows, "text": args.text_rows}
        for name, make, count, number, group in (
            ("captions", generate, args.rows, args.files, args.row_group),
            ("text", generate_text, args.text_rows, args.text_files, args.text_row_group),
        ):
            if name not in sets:
                continue
            began = time.perf_counter()
            (Path(folder) / name).mkdir()
            files[name] = make(Path(folder) / name, count, number, group)
            size = sum(p.stat().st_size for p in files[name]) / 2**20
            print(f"{name}: {count} rows in {number} files ({size:.0f} MB, row groups of {group}), "
                  f"generated in {time.perf_counter() - began:.1f} s", flush=True)
            run_worker("arrow-all", files[name], args.threads)  # warm the page cache
        results: dict[str, list[dict]] = {name: [] for name in methods}
        names = list(methods)
        for repeat in range(args.repeats):
            turn = names[repeat % len(names):] + names[: repeat % len(names)]  # rotate: no method always first
            for name in turn:
                file_set = methods[name][0]
                result = run_worker(name, files[file_set], args.threads)
                if result["rows"] != expected[file_set]:
                    raise SystemExit(f"{name} read {result['rows']} rows, not {expected[file_set]}")
                results[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        report(results, methods, args)


def report(results: dict[str, list[dict]], methods: dict, args: argparse.Namespace) -> None:
    """Median figures, the best run's rate (least disturbed by other processes), and paired ratios."""
    first = next(iter(results.values()))[0]
    print()
    print(f"pyarrow {first['pyarrow']}, pandas {first['pandas']}, pyarrow threads: {args.threads}")
    print()
    print("| mode | method | rows/s (median) | rows/s (best) | rows per CPU s | peak RSS MB | above start MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        _, mode, label = methods[name]
        rates = [r["rows"] / r["seconds"] for r in runs]
        cpu_rate = statistics.median(r["rows"] / r["cpu"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        above = statistics.median(r["above_start_mb"] for r in runs)
        print(f"| {mode} | {label} | {statistics.median(rates):,.0f} | {max(rates):,.0f} | {cpu_rate:,.0f} | "
              f"{peak:.0f} | {above:.0f} |")
    print()
    print("Ratios: how many times as fast ours is, medians of per-repeat pairs; by CPU seconds (what the")
    print("goal is judged on: other load on a shared machine disturbs it least) and by wall seconds.")
    for label, ours, baseline, goal in RATIOS:
        if ours not in results or baseline not in results:
            continue
        pairs = list(zip(results[ours], results[baseline]))
        by_cpu = [b["cpu"] / a["cpu"] for a, b in pairs]
        by_wall = [b["seconds"] / a["seconds"] for a, b in pairs]
        verdict = "" if goal is None else f"; goal >= {goal:g}: {'met' if statistics.median(by_cpu) >= goal else 'NOT met'}"
        print(f"{label}: CPU {statistics.median(by_cpu):.2f}x (paired {', '.join(f'{r:.2f}' for r in by_cpu)}), "
              f"wall {statistics.median(by_wall):.2f}x (paired {', '.join(f'{r:.2f}' for r in by_wall)}){verdict}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
