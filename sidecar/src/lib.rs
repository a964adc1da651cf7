//! The ApiWorkload diagnostics sidecar: measures, from inside the app's pod and without
//! privileges, what breaks Python API services under load (DNS search-list walks,
//! connection churn, event-loop stalls).
//!
//! Each signal has a module of pure parsing/decision code tested on its own; the binary
//! wires them to the pod's files and serves the results.

pub mod canary;
pub mod conditions;
pub mod config;
pub mod dns;
pub mod heartbeat;
pub mod podstatus;
pub mod procnet;
pub mod report;
pub mod resolv;
pub mod sockdiag;
pub mod sockets;
pub mod supervise;
