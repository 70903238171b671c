"""Baseline (c) of the lexserve benchmark: the usual way a model gets served in Python.

An async FastAPI endpoint that tokenizes with `tokenizers` and calls ONNX Runtime once per request
(no batching), with the same model, tokenizer, mean pooling and L2 normalisation as the sidecar.
Run by bench/run.sh under uvicorn; configured by environment variables:

    LEXSERVE_BENCH_MODEL       path to the ONNX model
    LEXSERVE_BENCH_TOKENIZER   path to tokenizer.json
    LEXSERVE_BENCH_THREADS     intra-op threads (default 2)
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel
from tokenizers import Tokenizer

MAX_TOKENS = 256

tokenizer = Tokenizer.from_file(os.environ["LEXSERVE_BENCH_TOKENIZER"])
tokenizer.no_padding()
tokenizer.enable_truncation(MAX_TOKENS)

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("LEXSERVE_BENCH_THREADS", "2"))
options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["LEXSERVE_BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
)
input_names = {i.name for i in session.get_inputs()}

app = FastAPI()


class TextsRequest(BaseModel):
    texts: list[str]


@app.post("/predict")
async def predict(request: TextsRequest):
    encodings = tokenizer.encode_batch(request.texts)
    longest = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in input_names})
    states = outputs[0]
    weights = mask[..., None].astype(np.float32)
    pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return {"embeddings": pooled.tolist()}


@app.get("/health")
async def health():
    return {"status": "alive"}
