//! The ApiWorkload diagnostics sidecar: measures, from inside the app's pod and without
//! privileges, what breaks Python API services under load (DNS search-list walks,
//! connection churn, event-loop stalls).
//!
//! Each signal has a module of pure parsing/decision code tested on its own (`dns`,
//! `canary`, `heartbeat`, `sockets`, `conditions`, `window`), a watcher that runs it
//! against the pod (`watch`) and metrics of its own (`metrics`); the binary only wires
//! them together.

pub mod canary;
pub mod conditions;
pub mod config;
pub mod dns;
pub mod evaluate;
pub mod heartbeat;
pub mod inflight;
pub mod ledger;
pub mod metrics;
pub mod podstatus;
pub mod procnet;
pub mod resolv;
pub mod server;
pub mod sockdiag;
pub mod sockets;
pub mod supervise;
pub mod watch;
pub mod window;
