//! The controllers: one folder per kind, and the machinery they share beside them.
//!
//! Every reconciler runs the same phases, each a named function: read what the object needs
//! (from watch caches) → validate (pure) → build every child (pure) → apply what changed or
//! drifted → sweep the orphans it owns and no longer builds → observe the children → compute
//! status (pure) → decide events (pure). The shared pieces:
//!
//! - [`cache`]: the watch caches (reflector stores) every read is served from;
//! - [`child`]: a built child in kind-neutral form, and the kinds a controller owns;
//! - [`drift`]: whether a live child still holds what was built (pure);
//! - [`apply`]: server-side apply of what changed, drifted or is missing;
//! - [`orphans`]: which owned children are no longer built (pure), and their deletion;
//! - [`events`]: publishing Events;
//! - [`error`] and [`error_policy`]: one error type, mapped once to a requeue, a metric and an
//!   Event;
//! - [`backoff`], [`signal_board`] (per-object memory) and [`context`].

pub mod apply;
pub mod backoff;
pub mod cache;
pub mod child;
pub mod context;
pub mod drift;
pub mod error;
pub mod error_policy;
pub mod events;
pub mod experiment;
pub mod inference_service;
pub mod orphans;
pub mod promql;
pub mod shadow;
pub mod signal_board;

pub use error::Error;
