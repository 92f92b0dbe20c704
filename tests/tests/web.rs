//! `tessera web` (docs/web.md): the status page, opened in headless Chromium (Debian's
//! `chromium`, installed by scripts/setup.sh), shows the servers, the mount and the health,
//! and changes when a server goes down.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tessera_tests::cluster::write_file_synced;
use tessera_tests::*;

/// The page as Chromium rendered it (its DOM after load).
fn rendered(url: &str) -> String {
    let out = run_timeout(Command::new("chromium").args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url]), Duration::from_secs(90));
    assert!(out.status.success(), "chromium --dump-dom {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_shows_servers_mounts_and_health_in_a_browser() {
    let mut c = ManualCluster::start(3, 3);
    let mnt = c.root().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut m = start_mount(&c.meta_addr, &c.client, &mnt, &c.root().join("mount.log"));
    let big = random_bytes(&mut seeded_rng(), 12 << 20);
    write_file_synced(&mnt.join("big"), &big).unwrap();

    let port = free_tcp_port();
    let url = format!("http://127.0.0.1:{port}/");
    let mut web = Proc::spawn(
        "tessera web",
        Command::new(bin("tessera")).args(["web", "--listen", &format!("127.0.0.1:{port}"), "--meta", &c.meta_addr, "--certs"]).arg(&c.admin),
        &c.root().join("web.log"),
    );
    assert!(wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).is_some(), "tessera web did not listen");

    let status: serde_json::Value = serde_json::from_slice(&c.status_output(&c.admin).stdout).unwrap();
    let dom = rendered(&url);
    assert!(dom.contains("<p class=\"health ok\" id=\"health\">healthy: 3 servers up, every block has its 3 copies</p>"), "{dom}");
    for n in status["nodes"].as_array().unwrap() {
        assert!(dom.contains(n["addr"].as_str().unwrap()), "server {} is not on the page\n{dom}", n["addr"]);
    }
    assert_eq!(dom.matches("<td class=\"ok\">up</td>").count(), 3, "{dom}");
    assert!(dom.contains("<td>client-1</td>"), "the mount's certificate is listed\n{dom}");
    assert!(dom.contains(&format!("<p id=\"summary\">{} files · 12.0 MiB logical, 36.0 MiB stored", status["files"])), "{dom}");

    // A screenshot, as docs/web.png was made (TESSERA_WEB_SCREENSHOT=docs/web.png keeps it).
    let shot = c.root().join("web.png");
    let out = run_timeout(
        Command::new("chromium").args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"]).arg(format!("--screenshot={}", shot.display())).arg(&url),
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "chromium --screenshot: {out:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of {} bytes", png.len());
    if let Ok(keep) = std::env::var("TESSERA_WEB_SCREENSHOT") {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(keep), &png).unwrap();
    }

    // A server goes down: the page says so.
    c.chunks[2].stop();
    let down = wait_for(Duration::from_secs(60), || {
        let dom = rendered(&url);
        dom.contains("<p class=\"health warn\" id=\"health\">1 server(s) down").then_some(dom)
    });
    let dom = down.expect("the page did not show the server down within 60 s");
    assert!(dom.contains("<td class=\"bad\">down</td>"), "{dom}");
    let gone = status["nodes"].as_array().unwrap().iter().find(|n| n["zone"] == "z2").unwrap()["addr"].as_str().unwrap().to_string();
    assert!(dom.contains(&format!("({gone}) is now down (was up)</td>")), "the event is listed\n{dom}");
    assert!(dom.contains("mount session 1 opened by client-1"), "{dom}");

    // The page has no authentication: it listens on loopback only.
    let out = run_timeout(Command::new(bin("tessera")).args(["web", "--listen", "0.0.0.0:7181", "--meta", &c.meta_addr, "--certs"]).arg(&c.admin), Duration::from_secs(30));
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback only") && err.trim().lines().count() == 1, "{err}");

    // It comes back: healthy again.
    c.restart_chunk(2);
    let back = wait_for(Duration::from_secs(60), || rendered(&url).contains("<p class=\"health ok\" id=\"health\">healthy: 3 servers up").then_some(()));
    assert!(back.is_some(), "the page did not show the cluster healthy again within 60 s");

    web.stop();
    m.stop();
    c.assert_fsck_clean();
    c.assert_running();
}
