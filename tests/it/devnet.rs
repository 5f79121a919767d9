//! `scripts/devnet.sh`: up, status, a node killed and brought back by a second `up`,
//! down leaving no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::bin;

fn devnet(dir: &Path, args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/devnet.sh");
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--dir".into(), dir.display().to_string()]);
    let out = Command::new(script)
        .args(&a)
        .env("CHAINMESH_BIN", bin())
        .output()
        .expect("run scripts/devnet.sh");
    assert!(
        out.status.success(),
        "devnet.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (height, peers, tip) per node from `devnet.sh status`.
fn status(dir: &Path) -> Vec<(u64, u64, String)> {
    let out = String::from_utf8(devnet(dir, &["status"]).stdout).unwrap();
    out.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[3].parse().unwrap_or(0),
                f[4].parse().unwrap_or(0),
                f.get(5).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

fn pids(dir: &Path) -> Vec<u32> {
    (0..)
        .map(|i| dir.join(format!("n{i}")))
        .take_while(|d| d.exists())
        .filter_map(|d| std::fs::read_to_string(d.join("pid")).ok())
        .map(|p| p.trim().parse().unwrap())
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn devnet_script_brings_up_a_connected_network_and_takes_it_down() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("devnet");
    // A port range of our own, below the kernel's ephemeral range (32768 and up), where
    // the other tests' outgoing connections take their local ports.
    let base = 10_000 + (std::process::id() % 100) as u16 * 200;
    let base = base.to_string();
    let out = devnet(
        &dir,
        &["up", "4", "--authorities", "2", "--base-port", &base],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("devnet up: 4 nodes"), "{text}");
    // Same tip everywhere within two slots, every node with peers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&dir);
        let same = s.len() == 4 && s.iter().all(|n| n.2 == s[0].2 && !n.2.is_empty());
        if same && s.iter().all(|n| n.1 >= 2 && n.0 >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no common tip: {s:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Load: valid transfers from the devnet's funded accounts over every node, reported
    // with their time to inclusion.
    let apis: Vec<String> = (0..4)
        .map(|i| format!("http://127.0.0.1:{}", base.parse::<u16>().unwrap() + i))
        .collect();
    let out = Command::new(bin())
        .args(["loadgen", "--api", &apis.join(","), "--keys"])
        .arg(dir.join("keys"))
        .args(["--rate", "50", "--duration", "4"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{report}"))
    };
    assert!(field("accepted") >= 150, "{report}");
    assert_eq!(field("rejected"), 0, "{report}");
    assert_eq!(field("included"), field("accepted"), "{report}");
    assert!(report.contains("to inclusion   median"), "{report}");
    eprintln!("{report}");

    // A node that died comes back with the next `up`; the others are left alone.
    let before = pids(&dir);
    let _ = Command::new("kill")
        .args(["-9", &before[2].to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    devnet(&dir, &["up", "4"]);
    let after = pids(&dir);
    assert_eq!(before[0], after[0]);
    assert_ne!(before[2], after[2]);
    // Down: nothing left running; data kept.
    devnet(&dir, &["down"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while after.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "processes left after down");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dir.join("n0/data/db").exists());
    devnet(&dir, &["down", "--clean"]);
    assert!(!dir.exists());
}
