"""Load generator for the generation benchmark (standard library only, so it runs in any venv).

Talks to an OpenAI-compatible /v1/completions endpoint (the lexserve sidecar, or llama.cpp's
llama-server) and measures, over HTTP with streaming:
  - single stream: time to first token and decode tokens/s (after the first token), on an ordinary
    prompt and on a copy-heavy one (repeat the given text: what prompt-lookup speculation is for);
  - at 1, 4, 8 and 16 concurrent streams (closed loop, each stream repeats requests): aggregate
    generated tokens/s, and time to first token and inter-token latency p50/p99;
  - per-token latency (mean gap between tokens) at several prompt lengths;
  - shared prefixes: time to first token of a request whose ~500-token system prompt another request
    already sent, against the first's; and, on lexserve, the prefix-cache counters in /metrics while
    8 such requests run at once.
Prints one JSON object. `bench.py compare A.json B.json [C.json]` prints them side by side with ratios.
"""

import http.client
import itertools
import json
import math
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


def stream_completion(base, prompt, max_tokens, tag=True, extra=None, on_first=None, chat=False):
    """Streams one completion; returns (token_times, prompt_tokens, completion_tokens).

    Unless `tag` is false, every prompt starts with a number of its own: both servers can reuse a
    cached prompt prefix, which would compare cache hits with real work. `on_first` is called once
    when the first token arrives. With `chat`, the prompt is one user message to
    /v1/chat/completions (each server applies the model's chat template)."""
    if tag:
        prompt = f"Note {next(_REQUESTS)}. {prompt}"
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    request = {
        **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        # Both servers honour it; lexserve ignores unknown OpenAI fields it does not need.
        "stream_options": {"include_usage": True},
    }
    request.update(extra or {})
    body = json.dumps(request)
    started = time.perf_counter()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    conn.request("POST", path, body, {"Content-Type": "application/json"})
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
                    if choice.get("text") or (choice.get("delta") or {}).get("content"):
                        times.append(time.perf_counter() - started)
                        if on_first is not None and len(times) == 1:
                            on_first()
    conn.close()
    return times, prompt_tokens, completion_tokens


# A passage to repeat: varied words (so the model copies rather than loops), about 130 tokens.
PASSAGE = (
    "Maria opened the bakery at six, as she had every morning for eleven years. The ovens took "
    "forty minutes to heat, so she used the time to weigh flour, check the sourdough starter and "
    "write the day's specials on the chalkboard by the door: rye with caraway, a walnut loaf, and "
    "small lemon tarts for the school children who stopped by at noon. Her nephew Tomas arrived at "
    "seven with the delivery van, and together they loaded thirty crates for the cafes along the "
    "harbour before the first customers came in."
)


# Ordinary chat requests: distinct topics, so neither the prompt nor the answer repeats itself (a
# prompt that repeats one sentence lets prompt-lookup speculation copy from it, which is the
# copy-heavy case, measured separately).
TOPICS = (
    "a lighthouse keeper who finds a message in a bottle",
    "how bees make honey",
    "why the sky is blue",
    "a robot that learns to paint",
    "the history of the bicycle",
    "a chess game between two old friends",
    "the first snow of winter in a mountain village",
    "how a volcano forms",
    "a cat that runs a small bookshop",
    "the life of a medieval blacksmith",
    "how trains changed travel",
    "a storm at sea seen from a small boat",
    "why people keep gardens",
    "a market day in a desert town",
    "how the moon affects the tides",
    "a violin maker and her last instrument",
    "the journey of a letter across the ocean",
    "how glass is made",
    "a fox living at the edge of a city",
    "the night before a big exam",
)


def chat_prompt(i):
    """The i-th ordinary chat request."""
    return f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."


def copy_prompt():
    """A chat message asking to repeat PASSAGE (SmolLM2-Instruct copies it through its chat template;
    as a raw completion it rambles instead)."""
    return f"Repeat the following text exactly, word for word.\n\nText: {PASSAGE}"


def single_stream(base, max_tokens, repeats, prompt=None):
    """Single-stream figures over `repeats` chat requests: `prompt`, or ordinary ones on different
    topics."""
    ttfts, rates = [], []
    for r in range(repeats):
        times, _, n = stream_completion(base, prompt or chat_prompt(r), max_tokens, chat=True)
        n = n or len(times)
        ttfts.append(times[0])
        # Decode rate: tokens after the first, over the time after the first.
        rates.append((n - 1) / (times[-1] - times[0]))
    ttft = statistics.median(ttfts)
    return {"ttft_s": ttft, "ttft_ms": 1e3 * ttft, "decode_tok_s": statistics.median(rates), "tokens": n}


def percentile(values, q):
    """The nearest-rank percentile (q in 0..100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def aggregate(base, concurrency, max_tokens, requests_per_stream):
    total = [0]
    ttfts, gaps = [], []
    lock = threading.Lock()
    errors = []

    def worker(i):
        for r in range(requests_per_stream):
            try:
                # Different short chat requests per stream, as different users send: the figure is
                # about decoding, which a long prompt would drown in prefill time.
                prompt = chat_prompt(i + r * concurrency)
                times, _, n = stream_completion(base, prompt, max_tokens, chat=True)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))
                return
            with lock:
                total[0] += n or len(times)
                ttfts.append(times[0])
                gaps.extend(b - a for a, b in zip(times, times[1:]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return {
        "tokens": total[0],
        "seconds": elapsed,
        "tok_s": total[0] / elapsed,
        "ttft_p50_ms": 1e3 * percentile(ttfts, 50),
        "ttft_p99_ms": 1e3 * percentile(ttfts, 99),
        "itl_p50_ms": 1e3 * percentile(gaps, 50),
        "itl_p99_ms": 1e3 * percentile(gaps, 99),
    }


_SYSTEMS = itertools.count()


def system_prompt():
    """A ~500-token system prompt, new each call (a number of its own at the start)."""
    return f"System {next(_SYSTEMS)}. You are a careful assistant. " + prompt_of_words(400)


def metrics_text(base):
    u = urlparse(base)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        return text if resp.status == 200 else ""
    except OSError:
        return ""


def prefix_metrics(base):
    """The sidecar's prefix-cache and shared-block series, summed per name (empty elsewhere)."""
    out = {}
    for line in metrics_text(base).splitlines():
        if line.startswith("#") or not line.startswith(("lexserve_prefix", "lexserve_kv_cache")):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{")[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def shared_prefix(base, trials, concurrent):
    """TTFT of a second request sharing a ~500-token system prompt against the first's (median over
    `trials` fresh system prompts), then `concurrent` requests with one more fresh system prompt at
    once: the prefix-cache series read while all of them are decoding."""
    firsts, seconds, prompt_tokens = [], [], None
    for _ in range(trials):
        system = system_prompt()
        t1, prompt_tokens, _ = stream_completion(
            base, system + "\nQuestion: where does the river go?\nAnswer:", 4, tag=False)
        t2, _, _ = stream_completion(
            base, system + "\nQuestion: what colour is the water?\nAnswer:", 4, tag=False)
        firsts.append(t1[0])
        seconds.append(t2[0])
    out = {
        "prompt_tokens": prompt_tokens,
        "first_ttft_ms": 1e3 * statistics.median(firsts),
        "second_ttft_ms": 1e3 * statistics.median(seconds),
    }
    out["second_over_first"] = out["second_ttft_ms"] / out["first_ttft_ms"]
    system = system_prompt()
    before = prefix_metrics(base)
    started = threading.Barrier(concurrent + 1)
    errors = []

    def worker(i):
        try:
            stream_completion(base, system + f"\nQuestion {i}: name a bridge.\nAnswer:", 48, tag=False,
                              on_first=lambda: started.wait(timeout=300))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(str(e))
            started.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrent)]
    for t in threads:
        t.start()
    try:
        started.wait(timeout=300)
        during = prefix_metrics(base)
    except threading.BrokenBarrierError:
        during = {}
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    out["concurrent"] = concurrent
    out["metrics_before"] = before
    out["metrics_during"] = during
    return out


def per_token_latency(base, words, max_tokens):
    times, prompt_tokens, _ = stream_completion(base, prompt_of_words(words), max_tokens)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"context": prompt_tokens, "ms_per_token": 1e3 * statistics.mean(gaps), "ttft_s": times[0]}


def run(base, name, concurrencies, parts):
    out = {"name": name}
    stream_completion(base, prompt_of_words(20), 8)  # warm-up
    out["single"] = single_stream(base, 96, 3)
    out["copy"] = single_stream(base, 128, 3, copy_prompt())
    if "all" not in parts:
        return out
    out["aggregate"] = {str(c): aggregate(base, c, 96, 2) for c in concurrencies}
    # ~16, ~256 and ~1024 tokens of context.
    out["latency"] = {
        label: per_token_latency(base, words, 48)
        for label, words in (("16", 6), ("256", 205), ("1024", 840))
    }
    out["prefix"] = shared_prefix(base, 3, 8)
    return out


def compare(paths):
    """Prints runs side by side; ratios are the first run over the second. A third run (lexserve with
    prompt-lookup speculation) adds a column and its ratio to the first."""
    runs = [json.load(open(p)) for p in paths]
    a, b = runs[0], runs[1]
    names = [r["name"] for r in runs]
    col = 16

    def get(run, *keys):
        for k in keys:
            if not isinstance(run, dict) or k not in run:
                return None
            run = run[k]
        return run

    def row(label, keys, spec, lower_better=False, extra=""):
        vals = [get(r, *keys) for r in runs]
        cells = "".join(f"{'-' if v is None else format(v, spec):>{col}}" for v in vals)
        ratio = ""
        if vals[0] is not None and vals[1]:
            ratio = f"{vals[0] / vals[1]:.2f}x" + (" (lower is better)" if lower_better else "")
        if len(vals) > 2 and vals[2] is not None and vals[0]:
            ratio += f"   {names[2]}/{names[0]} {vals[2] / vals[0]:.2f}x"
        print(f"{label:<36}{cells}   {ratio}{extra}")

    print(f"{'':<36}" + "".join(f"{n:>{col}}" for n in names) + f"   ratio {names[0]}/{names[1]}")
    row("single stream decode tok/s", ("single", "decode_tok_s"), ".1f")
    row("single stream TTFT ms", ("single", "ttft_ms"), ".1f", lower_better=True)
    row("copy-heavy decode tok/s", ("copy", "decode_tok_s"), ".1f")
    row("copy-heavy TTFT ms", ("copy", "ttft_ms"), ".1f", lower_better=True)
    for c in a.get("aggregate", {}):
        row(f"aggregate tok/s, {c:>2} streams", ("aggregate", c, "tok_s"), ".1f")
        row(f"  TTFT p50 ms, {c:>2} streams", ("aggregate", c, "ttft_p50_ms"), ".1f", True)
        row(f"  TTFT p99 ms, {c:>2} streams", ("aggregate", c, "ttft_p99_ms"), ".1f", True)
        row(f"  ITL p50 ms, {c:>2} streams", ("aggregate", c, "itl_p50_ms"), ".2f", True)
        row(f"  ITL p99 ms, {c:>2} streams", ("aggregate", c, "itl_p99_ms"), ".2f", True)
    one = get(a, "aggregate", "1", "tok_s")
    eight = get(a, "aggregate", "8", "tok_s")
    if one and eight:
        print(f"{names[0]}: 8 streams / 1 stream = {eight / one:.2f}x")
    for label in a.get("latency", {}):
        ctx = a["latency"][label]["context"]
        row(f"ms/token at context ~{label} ({ctx})", ("latency", label, "ms_per_token"), ".2f", True)
    lat = a.get("latency", {})
    for run in runs:
        lat = run.get("latency", {})
        if "16" in lat and "1024" in lat:
            print(
                f"{run['name']}: per-token latency at ~1024 vs ~16 context = "
                f"{lat['1024']['ms_per_token'] / lat['16']['ms_per_token']:.2f}x"
            )
    if "prefix" in a:
        row("shared prefix: 1st request TTFT ms", ("prefix", "first_ttft_ms"), ".1f", True)
        row("shared prefix: 2nd request TTFT ms", ("prefix", "second_ttft_ms"), ".1f", True)
        for run in runs:
            p = run.get("prefix")
            if p:
                print(f"{run['name']}: a request sharing a {p['prompt_tokens']}-token prompt prefix "
                      f"starts in {p['second_over_first']:.2f}x the first's time")
        during = a["prefix"].get("metrics_during") or {}
        if during:
            shown = ", ".join(f"{k} {v:g}" for k, v in sorted(during.items()))
            print(f"{names[0]} with {a['prefix']['concurrent']} requests sharing a prefix running: {shown}")
    if "kv" in a:
        kv = a["kv"]
        print(
            f"{names[0]} KV cache: {kv['bytes_per_token']} bytes/token held "
            f"(theoretical f32 {kv['theoretical_f32']}, f16 {kv['theoretical_f32'] // 2}); "
            f"resident growth per cached token measured {kv.get('rss_bytes_per_token', 'n/a')}"
        )


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2:])
    else:
        base, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
        concurrencies = [int(c) for c in (sys.argv[4] if len(sys.argv) > 4 else "1,4,8,16").split(",")]
        # "single": only the single-stream figures (ordinary and copy-heavy prompts).
        parts = sys.argv[5] if len(sys.argv) > 5 else "all"
        result = run(base, name, concurrencies, parts)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result), flush=True)
