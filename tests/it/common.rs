//! Running `chainmesh` as a child process and talking to its API.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chainmesh_proto::{Hash, Keypair, PublicKey, Tx};
use serde_json::Value;

/// The node binary the tests start: the one cargo built, or `CHAINMESH_TEST_BIN`, so that
/// a long run (the soak) can go on with a copy while the tree is rebuilt.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("CHAINMESH_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chainmesh-under-test").to_string())
    })
}

pub struct Node {
    child: Option<Child>,
    pub dir: PathBuf,
    pub api: String,
    http: reqwest::blocking::Client,
}

fn log_file(dir: &Path) -> File {
    std::fs::create_dir_all(dir).unwrap();
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap()
}

impl Node {
    /// `chainmesh dev` in `dir` with an API on a free loopback port.
    pub fn start_dev(dir: &Path, block_time_ms: u64) -> Node {
        let args: Vec<String> = vec![
            "dev".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--block-time-ms".into(),
            block_time_ms.to_string(),
            // Tests stay on loopback: no multicast on the host's interfaces.
            "--no-mdns".into(),
        ];
        Node::start(dir, &dir.join("data"), &args)
    }

    /// `chainmesh run --config <home>/config.toml` plus `extra` arguments.
    pub fn start_run(home: &Path, extra: &[String]) -> Node {
        Node::start_run_in(None, home, extra)
    }

    /// As [`Node::start_run`], inside network namespace `netns` (see `netns.rs`).
    pub fn start_run_in(netns: Option<&str>, home: &Path, extra: &[String]) -> Node {
        let cfg = chainmesh_node::config::Config::load(&home.join("config.toml")).unwrap();
        let mut args = vec![
            "run".to_string(),
            "--config".into(),
            home.join("config.toml").display().to_string(),
        ];
        args.extend_from_slice(extra);
        Node::start_in(netns, home, &cfg.data_dir, &args)
    }

    /// Starts the binary with `args`, logging to `<home>/node.log`, and waits for its API
    /// (whose address it writes to `<data_dir>/api.addr`).
    pub fn start(home: &Path, data_dir: &Path, args: &[String]) -> Node {
        Node::start_in(None, home, data_dir, args)
    }

    /// As [`Node::start`]; with `netns`, the process runs in that network namespace and
    /// the API is reached from a client whose sockets live there too.
    pub fn start_in(netns: Option<&str>, home: &Path, data_dir: &Path, args: &[String]) -> Node {
        let dir = home;
        let addr_file = data_dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let _ = std::fs::remove_file(data_dir.join("p2p.addrs"));
        let mut command = match netns {
            None => Command::new(bin()),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
        };
        let child = command
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file(dir))
            .stderr(log_file(dir))
            .spawn()
            .expect("start chainmesh");
        let mut node = Node {
            child: Some(child),
            dir: dir.to_path_buf(),
            api: String::new(),
            http: crate::netns::within(netns, || {
                // No keep-alive: a test that sends an oversized body gets its 413 and the
                // server closes that connection; a pooled connection would race that close.
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            }),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.trim().is_empty()
            {
                node.api = format!("http://{}", a.trim());
                if node.try_get("/status").is_some() {
                    return node;
                }
            }
            if let Some(st) = node.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited with {st} during start\n{}", node.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "node API not up in 30 s\n{}",
                node.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The node's first p2p listen address (with its peer id), once it is listening.
    pub fn p2p_addr(&self) -> String {
        let cfg_data = self.data_dir();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = std::fs::read_to_string(cfg_data.join("p2p.addrs"))
                && let Some(l) = s.lines().find(|l| l.contains("/tcp/"))
            {
                return l.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no p2p address\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn data_dir(&self) -> PathBuf {
        match chainmesh_node::config::Config::load(&self.dir.join("config.toml")) {
            Ok(c) => c.data_dir,
            Err(_) => self.dir.join("data"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn peers(&self) -> Vec<Value> {
        self.get("/peers").as_array().cloned().unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("node is running")
    }

    /// Resident memory of the node process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn try_get(&self, path: &str) -> Option<Value> {
        let r = self.http.get(format!("{}{path}", self.api)).send().ok()?;
        r.json().ok()
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .unwrap_or_else(|e| {
                let alive = std::path::Path::new(&format!("/proc/{}", self.pid())).exists();
                panic!(
                    "GET {path}: {e:?} (node process alive: {alive})\n{}",
                    self.log()
                )
            });
        r.json().unwrap()
    }

    /// A GET whose answer is text (`/metrics`).
    pub fn get_text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.api))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// One sample of `/metrics` (a histogram's count of observations), if present.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.get_text("/metrics");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the /metrics text parses");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }

    pub fn status(&self) -> Value {
        self.get("/status")
    }

    pub fn height(&self) -> u64 {
        self.status()["height"].as_u64().unwrap()
    }

    pub fn genesis_hash(&self) -> Hash {
        self.status()["genesis"].as_str().unwrap().parse().unwrap()
    }

    pub fn account(&self, a: &PublicKey) -> Value {
        self.get(&format!("/accounts/{a}"))
    }

    pub fn balance(&self, a: &PublicKey) -> u64 {
        self.account(a)["balance"].as_u64().unwrap()
    }

    /// POSTs a raw body to /txs; returns the status code and JSON answer.
    pub fn post_raw(&self, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/txs", self.api))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().unwrap_or(Value::Null))
    }

    /// The status code of posting `tx`, `None` when the node does not answer.
    pub fn try_post_tx(&self, tx: &Tx) -> Option<u16> {
        self.http
            .post(format!("{}/txs", self.api))
            .header("content-type", "application/json")
            .body(serde_json::to_string(tx).ok()?)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn post_tx(&self, tx: &Tx) -> (u16, Value) {
        self.post_raw(serde_json::to_string(tx).unwrap())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then waits for the node to shut down cleanly.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn key(&self, name: &str) -> Keypair {
        Keypair::load(&self.dir.join(format!("keys/{name}.key"))).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 50 ms until it is true or `secs` pass; panics with `what` then.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chainmesh")
}
