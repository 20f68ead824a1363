//! A local Lambda Runtime API for tests of the built functions: `cargo lambda watch
//! --only-lambda-apis` (which `scripts/test.sh` installs into `.venv-lambda`; `RELAY_CARGO_LAMBDA`
//! names another), a function binary run under it, and invocations through `cargo lambda
//! invoke`, each bounded so a function that never answers fails the test instead of hanging it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A process stopped when dropped.
#[derive(Debug)]
pub struct Running(Option<Child>);

impl Running {
    pub fn new(child: Child) -> Self {
        Running(Some(child))
    }

    /// Stops the process and returns what it wrote (of the streams that were piped).
    pub fn stop(mut self) -> Output {
        let mut child = self.0.take().expect("running until stopped");
        let _ = child.kill();
        child.wait_with_output().expect("the process's output")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Runtime API on a free loopback port, for as long as it is held.
#[derive(Debug)]
pub struct RuntimeApi {
    root: PathBuf,
    port: u16,
    _process: Running,
}

impl RuntimeApi {
    /// Starts it from the workspace at `root`, and waits until it listens.
    pub fn start(root: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = Running::new(
            Command::new(cargo_lambda(root))
                .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
                .args(["-P", &port.to_string()])
                .current_dir(root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cargo lambda watch starts"),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the Runtime API did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RuntimeApi {
            root: root.to_owned(),
            port,
            _process: process,
        }
    }

    /// Runs the function `binary` under this Runtime API with `env` beside the runtime's own
    /// variables; its stdout is piped (for its EMF lines), its stderr dropped.
    pub fn function(&self, binary: &str, env: &[(String, String)]) -> Running {
        Running::new(
            Command::new(binary)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{}/.rt", self.port),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", "_")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("the function starts"),
        )
    }

    /// Invokes the running function with `event`; the answer, or what the invocation said
    /// instead (an error's message is in the output).
    pub fn invoke(&self, event: &serde_json::Value) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(cargo_lambda(&self.root))
            .args(["lambda", "invoke", "-A", "127.0.0.1", "-P"])
            .arg(self.port.to_string())
            .args(["--data-ascii", &event.to_string()])
            .output()
            .expect("cargo lambda invoke runs")
    }
}

/// The answer of an invocation as JSON; a panic that shows what came instead.
pub fn answer(invoked: &Output) -> serde_json::Value {
    serde_json::from_slice(&invoked.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&invoked.stdout),
            String::from_utf8_lossy(&invoked.stderr)
        )
    })
}

fn cargo_lambda(root: &Path) -> PathBuf {
    let exe = std::env::var_os("RELAY_CARGO_LAMBDA")
        .map_or_else(|| root.join(".venv-lambda/bin/cargo-lambda"), PathBuf::from);
    assert!(
        exe.exists(),
        "{} not found: run scripts/test.sh (it installs cargo-lambda into .venv-lambda), or set RELAY_CARGO_LAMBDA",
        exe.display()
    );
    exe
}
