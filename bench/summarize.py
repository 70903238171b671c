"""Prints the benchmark table and the ratios a/b (sidecar vs raw ONNX Runtime loop at its best batch
size) and a/c (sidecar vs FastAPI at the same concurrency), from run.sh's JSON lines."""

import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    load = [r for r in rows if r["label"] in ("sidecar", "fastapi")]
    best = {r["texts"]: r for r in rows if r["label"] == "raw_ort_best"}

    print(f"{'server':8} {'texts':5} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ok':>6} {'err':>4} {'429':>4}")
    for r in load:
        print(
            f"{r['label']:8} {r['texts']:5} {r['concurrency']:>4} {r['throughput_rps']:>8.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['ok']:>6} {r['errors']:>4} {r['refused']:>4}"
        )
    fp32 = {r["texts"]: r for r in rows if r["label"] == "raw_ort_fp32_best"}
    for texts, r in best.items():
        line = f"raw ORT loop int8, {texts}: best {r['throughput_seq_s']:.1f} seq/s at batch {r['batch_size']}"
        if texts in fp32:
            f = fp32[texts]
            line += (
                f"; fp32 {f['throughput_seq_s']:.1f} seq/s at batch {f['batch_size']}"
                f" (int8/fp32 speed {r['throughput_seq_s'] / f['throughput_seq_s']:.2f}x)"
            )
        print(line)

    print()
    print(f"{'texts':5} {'conc':>4} {'a/b':>6} {'a/c':>6} {'p99 a':>8} {'p99 c':>8}")
    for a in (r for r in load if r["label"] == "sidecar"):
        b = best.get(a["texts"])
        c = next(
            (r for r in load if r["label"] == "fastapi" and r["texts"] == a["texts"] and r["concurrency"] == a["concurrency"]),
            None,
        )
        ab = a["throughput_rps"] / b["throughput_seq_s"] if b else float("nan")
        ac = a["throughput_rps"] / c["throughput_rps"] if c else float("nan")
        print(
            f"{a['texts']:5} {a['concurrency']:>4} {ab:>6.2f} {ac:>6.2f} "
            f"{a['p99_ms']:>8.2f} {(c['p99_ms'] if c else float('nan')):>8.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
