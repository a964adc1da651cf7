//! The ApiWorkload operator.
//!
//! Pure decisions (`sizing`, `budget`, `plan`, `render`, `conditions`, `rollup`) turn a
//! spec into the objects the cluster should hold; `controller` only applies them with
//! server-side apply and reports status.

pub mod api;
pub mod applied;
pub mod budget;
pub mod child_set;
pub mod children;
pub mod conditions;
pub mod controller;
pub mod env_hosts;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod overload;
pub mod plan;
pub mod render;
pub mod report;
pub mod rollup;
pub mod sizing;
pub mod unreadable;
