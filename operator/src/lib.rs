//! The ApiWorkload operator.
//!
//! Pure decisions (`sizing`, `budget`, `render`) turn a spec into the objects the
//! cluster should hold; the controller only applies them and reports status.

pub mod api;
pub mod budget;
pub mod plan;
pub mod render;
pub mod sizing;
