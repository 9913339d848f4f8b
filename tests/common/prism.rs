//! Prism mocks generated from the vendors' own OpenAPI documents (../shared/specs, overridable with
//! `QM_SPECS_DIR`). Prism validates every request against the spec: a request our client gets wrong comes
//! back as 4xx, which fails the test. Where the specs are absent the tests say loudly that they skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The specs folder, or `None` (after a loud message) when it is absent.
pub fn specs_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QM_SPECS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::root().join("../shared/specs"));
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "vendor OpenAPI specs not found at {} and CI is set: CI always has ../shared/specs",
            dir.display()
        );
    } else {
        eprintln!(
            "\n*** SKIPPED: vendor OpenAPI specs not found at {} (set QM_SPECS_DIR); CI always has them ***\n",
            dir.display()
        );
        None
    }
}

fn prism_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QM_PRISM") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    let p = cache.join("quartermaster/prism-5/node_modules/.bin/prism");
    assert!(
        p.exists(),
        "Prism not installed at {}: run scripts/test (or scripts/install-prism.sh)",
        p.display()
    );
    p
}

/// A running `prism mock`, killed on drop.
pub struct Prism {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prism {
    /// Starts Prism on a free port for `spec` (relative to the specs folder) and waits until it listens.
    pub fn start(specs: &std::path::Path, spec: &str) -> Prism {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(prism_bin())
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(specs.join(spec))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prism");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Prism is listening") {
                    let _ = tx.send(());
                }
                // Keep draining so Prism never blocks on a full pipe; show its request log in test output.
                if line.contains("[VALIDATOR]") || line.contains("✖") {
                    eprintln!("prism: {line}");
                }
            }
        });
        let started = Instant::now();
        rx.recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("prism did not start for {spec}"));
        eprintln!(
            "prism for {spec} listening on {port} after {:?}",
            started.elapsed()
        );
        Prism {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}
