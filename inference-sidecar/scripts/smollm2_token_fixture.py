"""Writes tests/fixtures/smollm2_token_ids.json: prompt ids from llama.cpp's tokenizer (the reference
implementation of GGUF tokenizers, through llama-cpp-python) for texts that exercise the BPE's
pre-tokenization (digits, spaces, code, special tokens, non-Latin scripts). The sidecar's tokenizer,
rebuilt from the same GGUF's metadata, must produce the same ids.

    python smollm2_token_fixture.py MODEL.gguf OUT.json   (with bench/generate/setup-llama.sh's venv)
"""

import json
import sys

from llama_cpp import Llama

TEXTS = [
    "What is the capital of France?",
    "Hello",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, pi was still 3.14159 and a million is 1000000.",
    "  two  spaces, a\ttab and\n\nnewlines   ",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "I'm sure you're right, it's John's and they'll say we'd've known.",
    "Emojis like 🚀 and accented letters such as café should not break anything.",
    "東京は日本の首都です。Москва — столица России.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "x<|endoftext|>y",
]

model = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
cases = [
    {"text": t, "ids": model.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
    for t in TEXTS
]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write('{"source": "llama.cpp via llama-cpp-python 0.3.36",\n "cases": [\n')
    f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
    f.write("\n ]\n}\n")
