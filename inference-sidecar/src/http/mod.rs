//! The HTTP API: native, OpenAI-compatible and KServe v2 routes over one model service (encoders),
//! and the generation routes (native and OpenAI, whole answers or server-sent token streams).
//!
//! Imports run one way: [`server`] (the lifecycle) serves [`connection`]s with the route table
//! from [`routes`], whose inference routes sit behind [`admission`], and which names the handlers ([`native`], [`openai`], [`v2`], [`generate`], [`completions`]); every handler
//! takes the shared [`state`] and answers errors through [`error`]. No handler knows the server.

pub mod admission;
pub mod binary_tensors;
pub mod body;
pub mod completions;
pub mod connection;
pub mod error;
pub mod generate;
pub mod native;
pub mod openai;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;
pub mod v2;
