//! Running the `quartermaster` binary from tests: a free loopback port, a child that is killed when its
//! handle is dropped (a failed assertion never leaves a process behind), and `quartermaster run` wired to
//! the test control plane with its own HTTP port, ledger file and log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A port nobody listens on right now (on 127.0.0.1).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary under test.
pub fn quartermaster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quartermaster"))
}

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` (stdout discarded unless the command set it).
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn the process"))
    }

    /// The process ID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `quartermaster run` as a process, its HTTP server on [`Controller::port`].
pub struct Controller {
    /// The process.
    pub proc: Proc,
    /// Its HTTP port (`/metrics`, `/readyz`).
    pub port: u16,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// Starts `quartermaster run` against `kubeconfig` with `args` added: HTTP on a free port, the ledger in
/// a SQLite file of this test process, the log in the temp directory as `<name>-<port>.log`.
pub fn spawn_run(name: &str, kubeconfig: &Path, args: &[&str]) -> Controller {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{name}-{port}.log"));
    let proc = Proc::spawn(
        quartermaster()
            .args(["run", "--http-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env(
                "QM_LEDGER_PATH",
                std::env::temp_dir().join(format!("qm-ledger-{}.db", std::process::id())),
            )
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    Controller { proc, port, log }
}
