"""Load generator for the generation benchmark (standard library only, so it runs in any venv).

Talks to an OpenAI-compatible /v1/completions endpoint (the lexserve sidecar, or llama-cpp-python's
server) and measures, over HTTP with streaming:
  - single stream: time to first token and decode tokens/s (after the first token);
  - aggregate generated tokens/s at several concurrencies (closed loop, each stream repeats requests);
  - per-token latency (mean gap between tokens) at several prompt lengths.
Prints one JSON object. `bench.py compare A.json B.json [C.json]` prints them side by side with ratios.
"""

import http.client
import itertools
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

SENTENCE = (
    "The river winds through the valley, past old stone bridges and quiet farms, "
    "while the evening light turns the water gold. "
)


def prompt_of_words(words):
    """A plain-text prompt of about `words` words (SmolLM2: ~1.2 tokens per word)."""
    base = SENTENCE.split()
    out = [base[i % len(base)] for i in range(words)]
    return " ".join(out) + "\nSummarize the passage above:"


_REQUESTS = itertools.count()


def stream_completion(base, prompt, max_tokens):
    """Streams one completion; returns (token_times, prompt_tokens, completion_tokens).

    Every prompt starts with a number of its own: llama-cpp-python's server keeps the previous
    prompt's cache and would otherwise skip the prefill of a repeated prefix (lexserve does not cache
    prefixes), which would compare cache hits with real work."""
    prompt = f"Note {next(_REQUESTS)}. {prompt}"
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps(
        {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            # Both servers honour it; lexserve ignores unknown OpenAI fields it does not need.
            "stream_options": {"include_usage": True},
        }
    )
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    times = []
    prompt_tokens = None
    completion_tokens = None
    buf = b""
    done = False
    while True:
        try:
            chunk = resp.read1(65536)
        except http.client.IncompleteRead:
            # The connection closed after the last event but before the chunked terminator was
            # read: harmless once the stream said it was done.
            if done:
                break
            raise
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    continue
                obj = json.loads(data)
                usage = obj.get("usage")
                if usage:
                    prompt_tokens = usage.get("prompt_tokens")
                    completion_tokens = usage.get("completion_tokens")
                for choice in obj.get("choices") or []:
                    if choice.get("text"):
                        times.append(time.perf_counter() - started)
    conn.close()
    return times, prompt_tokens, completion_tokens


def single_stream(base, max_tokens, repeats):
    ttfts, rates = [], []
    for _ in range(repeats):
        times, _, n = stream_completion(base, prompt_of_words(40), max_tokens)
        n = n or len(times)
        ttfts.append(times[0])
        # Decode rate: tokens after the first, over the time after the first.
        rates.append((n - 1) / (times[-1] - times[0]))
    return {"ttft_s": statistics.median(ttfts), "decode_tok_s": statistics.median(rates)}


def aggregate(base, concurrency, max_tokens, requests_per_stream):
    total = [0]
    lock = threading.Lock()
    errors = []

    def worker(i):
        for r in range(requests_per_stream):
            try:
                # Different short prompts per stream, as different users send: the figure is about
                # decoding, which a long prompt would drown in prefill time.
                times, _, n = stream_completion(base, prompt_of_words(8 + i + r), max_tokens)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))
                return
            with lock:
                total[0] += n or len(times)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return {"tokens": total[0], "seconds": elapsed, "tok_s": total[0] / elapsed}


def per_token_latency(base, words, max_tokens):
    times, prompt_tokens, _ = stream_completion(base, prompt_of_words(words), max_tokens)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"context": prompt_tokens, "ms_per_token": 1e3 * statistics.mean(gaps), "ttft_s": times[0]}


def run(base, name, concurrencies):
    out = {"name": name}
    stream_completion(base, prompt_of_words(20), 8)  # warm-up
    out["single"] = single_stream(base, 96, 3)
    out["aggregate"] = {str(c): aggregate(base, c, 96, 2) for c in concurrencies}
    # ~16, ~256 and ~1024 tokens of context.
    out["latency"] = {
        label: per_token_latency(base, words, 48)
        for label, words in (("16", 6), ("256", 205), ("1024", 840))
    }
    return out


def compare(paths):
    runs = [json.load(open(p)) for p in paths]
    a = runs[0]
    names = [r["name"] for r in runs]
    col = 16

    def row(label, values, ratio=None):
        cells = "".join(f"{v:>{col}}" for v in values)
        print(f"{label:<34}{cells}" + (f"   {ratio}" if ratio else ""))

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    row("", names, f"ratio {names[0]}/{names[1]}")
    s = [r.get("single", {}) for r in runs]
    row(
        "single stream decode tok/s",
        [fmt(x.get("decode_tok_s"), ".1f") for x in s],
        f"{s[0]['decode_tok_s'] / s[1]['decode_tok_s']:.2f}x",
    )
    row(
        "single stream TTFT ms",
        [fmt(x.get("ttft_s") and x["ttft_s"] * 1e3, ".1f") for x in s],
        f"{s[0]['ttft_s'] / s[1]['ttft_s']:.2f}x (lower is better)",
    )
    for c in a.get("aggregate", {}):
        vals = [r.get("aggregate", {}).get(c, {}).get("tok_s") for r in runs]
        ratio = f"{vals[0] / vals[1]:.2f}x" if vals[1] else ""
        row(f"aggregate tok/s, {c:>2} streams", [fmt(v, ".1f") for v in vals], ratio)
    one = a["aggregate"].get("1", {}).get("tok_s")
    eight = a["aggregate"].get("8", {}).get("tok_s")
    if one and eight:
        print(f"{names[0]}: 8 streams / 1 stream = {eight / one:.2f}x (goal >= 2x)")
    for label in a.get("latency", {}):
        vals = [r.get("latency", {}).get(label, {}).get("ms_per_token") for r in runs]
        ctx = a["latency"][label]["context"]
        row(f"ms/token at context ~{label} ({ctx})", [fmt(v, ".2f") for v in vals],
            f"{vals[0] / vals[1]:.2f}x (lower is better)" if vals[1] else "")
    lat = a.get("latency", {})
    if "16" in lat and "1024" in lat:
        print(
            f"{names[0]}: per-token latency at ~1024 vs ~16 context = "
            f"{lat['1024']['ms_per_token'] / lat['16']['ms_per_token']:.2f}x"
        )
    if "kv" in a:
        kv = a["kv"]
        print(
            f"{names[0]} KV cache: {kv['bytes_per_token']} bytes/token held "
            f"(theoretical f32 {kv['theoretical_f32']}, ratio {kv['bytes_per_token'] / kv['theoretical_f32']:.2f}; "
            f"llama.cpp's default f16 cache: {kv['theoretical_f32'] // 2}); "
            f"resident growth per cached token measured {kv.get('rss_bytes_per_token', 'n/a')}"
        )


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2:])
    else:
        base, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
        concurrencies = [int(c) for c in (sys.argv[4] if len(sys.argv) > 4 else "1,4,8,16").split(",")]
        result = run(base, name, concurrencies)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result), flush=True)
