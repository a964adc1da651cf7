//! Starting the real sidecar binary in tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

/// The `apiworkload-sidecar` binary listening on a free loopback port; killed on drop,
/// so a failed assertion never leaves it running.
pub struct Sidecar {
    child: Child,
    pub addr: SocketAddr,
}

impl Sidecar {
    /// Starts it with `--listen` set and the given extra flags.
    pub fn start(args: &[String]) -> Sidecar {
        let port = apiworkload_e2e::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_apiworkload-sidecar"))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sidecar {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
