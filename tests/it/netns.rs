//! Network namespaces for NAT tests, built by `scripts/netns-nat.sh` (see its header for
//! the topology) and torn down when the [`Topology`] is dropped. Needs root.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `f` on a thread that entered network namespace `ns` (or here, for `None`).
/// Threads it starts inherit the namespace: a blocking reqwest client built in `f` keeps
/// its sockets there.
pub fn within<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
            // SAFETY: setns on a valid namespace fd only changes this thread's network
            // namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-nat.sh")
}

/// A NAT topology of namespaces named `<prefix>-pub`, `-ra`, `-rb`, `-a1`.., `-b1`..
pub struct Topology {
    pub prefix: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    pub fn up(symmetric: bool, lan_nodes: u32) -> Topology {
        let prefix = format!(
            "t{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut c = Command::new(script());
        c.args([
            "up",
            "--prefix",
            &prefix,
            "--lan-nodes",
            &lan_nodes.to_string(),
        ]);
        if symmetric {
            c.arg("--symmetric");
        }
        let out = c.output().expect("run scripts/netns-nat.sh");
        assert!(
            out.status.success(),
            "scripts/netns-nat.sh up failed (root, iproute2 and iptables are needed):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Topology { prefix }
    }

    /// Namespace name of `pub`, `a1`, `b2`, ...
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", "--prefix", &self.prefix])
            .status();
    }
}
