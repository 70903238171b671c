//! Serving encoders (embed, classify): from a model uri to answers.
//!
//! - [`artifacts`]: finding a model's files on disk (weights, tokenizer, pooling, head) and checking
//!   its digest.
//! - [`tokenize`]: text → token ids with the model's own tokenizer, padding and truncation set here.
//! - [`backend`]: the inference engines (ONNX Runtime, candle) behind one trait, padded batch in, raw
//!   output out.
//! - [`head`]: pooling, normalisation and the classification head, the same for every backend.
//! - [`pipeline`]: tokenizer → backend → head, loaded and warmed up as one.
//! - [`batching`]: the bounded queue that forms token-budgeted batches, and the worker that runs them.
//! - [`variant`]: whether the int8 or the fp32 form of the weights runs faster on this CPU, timed at
//!   start-up when the model folder holds both.
//! - [`service`]: the model service the HTTP layer talks to: loading in the background, readiness,
//!   draining, and each request through the batching queue; for a decoder it hands out the
//!   generation engine's handle ([`crate::generation`]) instead.

pub mod artifacts;
pub mod backend;
pub mod batching;
pub mod head;
pub mod pipeline;
pub mod service;
pub mod tokenize;
pub mod variant;
