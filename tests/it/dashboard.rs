//! The dashboard at `GET /`, rendered by a real browser: headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`) loads the page from a running node, runs its
//! script against the API and dumps the DOM, whose numbers must be the node's.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chainmesh_proto::Tx;

use crate::chains::{TestNet, copy_dir};
use crate::common::{Node, wait_until};

/// The browser binary: `$CHROMIUM`, else the first of Debian's and others' names on PATH.
pub fn chromium() -> String {
    if let Ok(c) = std::env::var("CHROMIUM") {
        return c;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.into();
        }
    }
    panic!("no Chromium: install Debian's `chromium` (.ci/run does) or set CHROMIUM");
}

/// The DOM after the page's script ran for `budget_ms` of virtual time (which stands
/// still while requests are in flight, so every fetch the page started has finished).
fn rendered_dom(url: &str, profile: &Path, budget_ms: u64) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` (no nested elements inside it).
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].trim().to_string()
}

/// Every value of attribute `attr` in the page.
fn attr_values(dom: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    dom.match_indices(&key)
        .map(|(i, _)| {
            let v = &dom[i + key.len()..];
            v[..v.find('"').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn the_dashboard_in_headless_chromium_shows_what_the_api_says() {
    let root = tempfile::tempdir().unwrap();
    // Nobody produces: height, tip, pool and peers hold still while the browser looks.
    let net = TestNet::new("dashtest", 0);
    let a_home = net.node_home(&root.path().join("a"));
    let built_tip = net.build_chain(&a_home, 20, 1);
    let b_home = net.node_home(&root.path().join("b"));
    copy_dir(&a_home.join("data/db"), &b_home.join("data/db"));
    let a = Node::start_run(&a_home, &[]);
    let b = Node::start_run(&b_home, &["--peer".into(), a.p2p_addr()]);
    let chain = a.genesis_hash();
    for nonce in 20..23 {
        let tx = Tx::transfer(&net.alice, &chain, net.authority.public(), 1, 1, nonce);
        assert_eq!(a.post_tx(&tx).0, 202);
    }
    wait_until(30, "three pending txs at b and b's tip known to a", || {
        b.status()["mempool_txs"] == 3 && a.peers().iter().any(|p| p["height"] == 20)
    });
    // Two history samples, so that the rate charts have a point.
    wait_until(10, "two history samples", || {
        a.get("/history").as_array().is_some_and(|s| s.len() >= 2)
    });

    let profile = root.path().join("chromium");
    let mut dom = String::new();
    for _ in 0..3 {
        dom = rendered_dom(&format!("{}/", a.api), &profile, 4_000);
        if dom.contains("data-ready=\"1\"") {
            break;
        }
    }
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never rendered the API's answers:\n{dom}"
    );

    let status = a.status();
    let peers = a.peers();
    assert_eq!(text_of(&dom, "network"), "dashtest");
    assert_eq!(text_of(&dom, "height"), status["height"].to_string());
    assert_eq!(status["height"], 20);
    assert_eq!(text_of(&dom, "tip"), built_tip.to_string());
    assert_eq!(text_of(&dom, "tip"), status["tip"].as_str().unwrap());
    assert_eq!(
        text_of(&dom, "mempool-txs"),
        status["mempool_txs"].to_string()
    );
    assert_eq!(status["mempool_txs"], 3);
    assert_eq!(
        text_of(&dom, "mempool-bytes"),
        status["mempool_bytes"].to_string()
    );
    assert_eq!(text_of(&dom, "peer-count"), peers.len().to_string());
    assert_eq!(text_of(&dom, "sync-state"), "in sync");
    // The peer table: b, at b's height.
    let b_id = b.p2p_addr().rsplit("/p2p/").next().unwrap().to_string();
    let rows = attr_values(&dom, "data-peer");
    let want: Vec<String> = peers
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows, want);
    assert!(rows.contains(&b_id), "b ({b_id}) not among {rows:?}");
    assert_eq!(attr_values(&dom, "data-height"), ["20"]);
    // Every chart drew from the node's history.
    let points: Vec<u64> = attr_values(&dom, "data-points")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(points.len(), 3, "three charts");
    assert!(points.iter().all(|&n| n >= 1), "chart points {points:?}");
}
