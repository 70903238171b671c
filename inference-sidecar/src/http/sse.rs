//! Server-sent events for token streams. The stream owns the request's event receiver and its
//! in-flight token: when the client disconnects, axum drops the stream, the receiver closes, and the
//! engine frees the sequence's cache blocks at its next step; SIGTERM's drain waits for the token.
//! The receiver is bounded: a client that does not read leaves events unpolled, the engine holds
//! its sequence back, and after the stall timeout cancels it.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc::Receiver;

use crate::encoder::service::InFlightWork;
use crate::generation::GenerationEvent;

/// What a route makes of one engine event: SSE events to send, and whether the stream ends.
pub struct Mapped {
    pub events: Vec<Event>,
    pub end: bool,
}

struct StreamState<T, M> {
    source: BoxStream<'static, T>,
    /// Held until the stream is polled past its last event, so that a drain waits for the end.
    _work: InFlightWork,
    map: M,
    /// Sent after the end (`data: [DONE]`).
    tail: Vec<Event>,
    ended: bool,
}

/// A receiver's events as a stream.
pub fn receiver_stream<T: Send + 'static>(receiver: Receiver<T>) -> BoxStream<'static, T> {
    stream::unfold(
        receiver,
        |mut r| async move { r.recv().await.map(|e| (e, r)) },
    )
    .boxed()
}

/// Streams `receiver` through `map`, then `tail`.
pub fn token_stream<M>(
    receiver: Receiver<GenerationEvent>,
    work: InFlightWork,
    map: M,
    tail: Vec<Event>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    M: FnMut(GenerationEvent) -> Mapped + Send + 'static,
{
    event_stream(receiver_stream(receiver), work, map, tail)
}

/// Streams `source` (the events of one sequence, or of a request's several, merged) through `map`,
/// then `tail`. Dropping it drops `source`, which cancels every sequence in it.
pub fn event_stream<T, M>(
    source: BoxStream<'static, T>,
    work: InFlightWork,
    map: M,
    tail: Vec<Event>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    T: Send + 'static,
    M: FnMut(T) -> Mapped + Send + 'static,
{
    let state = Some(StreamState {
        source,
        _work: work,
        map,
        tail,
        ended: false,
    });
    let events = stream::unfold(state, |state| async move {
        let mut state = state?;
        if state.ended {
            return None;
        }
        let events = match state.source.next().await {
            Some(event) => {
                let Mapped { mut events, end } = (state.map)(event);
                if end {
                    events.append(&mut state.tail);
                    state.ended = true;
                }
                events
            }
            // The engine went away without finishing: end the stream rather than hang.
            None => {
                state.ended = true;
                std::mem::take(&mut state.tail)
            }
        };
        Some((events, Some(state)))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events).keep_alive(KeepAlive::default())
}
