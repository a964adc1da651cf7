//! The watchers: long-running tasks that each measure one signal from beside the app,
//! record it in their metrics and send typed [`Evidence`](crate::window::Evidence) to
//! the current window. None of them decides a condition.

pub mod connections;
pub mod dns;
pub mod event_loop;
pub mod heartbeat;
pub mod inflight;
