//! The HTTP API: native, OpenAI-compatible and KServe v2 routes over one model service.

pub mod body;
pub mod error;
pub mod native;
pub mod openai;
pub mod server;
pub mod v2;
