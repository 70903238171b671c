//! The HTTP API: native, OpenAI-compatible and KServe v2 routes over one model service (encoders),
//! and the generation routes (native and OpenAI, whole answers or server-sent token streams).

pub mod body;
pub mod completions;
pub mod error;
pub mod generate;
pub mod native;
pub mod openai;
pub mod server;
pub mod sse;
pub mod v2;
