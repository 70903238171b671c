"""Prints the benchmark table and the ratios a/b (sidecar vs the raw ONNX Runtime loop at the batch size
the concurrency allows: its best throughput at a batch of at most `concurrency` texts, since a server
with `concurrency` clients never has more than that many texts to batch) and a/c (sidecar vs FastAPI at
the same concurrency), from run.sh's JSON lines. For the mixed workload (b) is the loop that batches in
arrival order, padded to the longest text of each batch."""

import json
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    load = [r for r in rows if r["label"] in ("sidecar", "fastapi")]
    raw = [r for r in rows if r["label"] == "raw_ort"]
    best = {r["texts"]: r for r in rows if r["label"] == "raw_ort_best"}

    print(f"{'server':8} {'texts':5} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ok':>6} {'err':>4} {'429':>4}")
    for r in load:
        print(
            f"{r['label']:8} {r['texts']:5} {r['concurrency']:>4} {r['throughput_rps']:>8.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['ok']:>6} {r['errors']:>4} {r['refused']:>4}"
        )
    fp32 = [r for r in rows if r["label"] == "raw_ort_fp32"]
    for texts, r in best.items():
        at = {x["batch_size"]: x["throughput_seq_s"] for x in raw if x["texts"] == texts}
        line = f"raw ORT loop int8, {texts}: " + ", ".join(f"b{b} {t:.1f}" for b, t in sorted(at.items()))
        f = {x["batch_size"]: x["throughput_seq_s"] for x in fp32 if x["texts"] == texts}
        if f:
            line += "\n  fp32: " + ", ".join(f"b{b} {t:.1f}" for b, t in sorted(f.items()))
            line += "\n  int8/fp32: " + ", ".join(f"b{b} {at[b] / t:.2f}x" for b, t in sorted(f.items()) if b in at)
        print(line)

    print()
    print(f"{'texts':5} {'conc':>4} {'b batch':>7} {'b seq/s':>8} {'a/b':>6} {'a/c':>6} {'p99 a':>8} {'p99 c':>8}")
    for a in (r for r in load if r["label"] == "sidecar"):
        allowed = [x for x in raw if x["texts"] == a["texts"] and x["batch_size"] <= a["concurrency"]]
        b = max(allowed, key=lambda x: x["throughput_seq_s"], default=None)
        c = next(
            (r for r in load if r["label"] == "fastapi" and r["texts"] == a["texts"] and r["concurrency"] == a["concurrency"]),
            None,
        )
        ab = a["throughput_rps"] / b["throughput_seq_s"] if b else float("nan")
        ac = a["throughput_rps"] / c["throughput_rps"] if c else float("nan")
        print(
            f"{a['texts']:5} {a['concurrency']:>4} {(b['batch_size'] if b else 0):>7} "
            f"{(b['throughput_seq_s'] if b else float('nan')):>8.1f} {ab:>6.2f} {ac:>6.2f} "
            f"{a['p99_ms']:>8.2f} {(c['p99_ms'] if c else float('nan')):>8.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
