//! `udn demo` end to end: starts the real binary, reads `endpoints.json`, and runs the
//! README's guided tour with real clients (`dig`, `curl`, `sqlite3`, `udn demo drill`):
//! DNS answers per simulated region go to the nearest POP, the CDN misses then hits, a
//! purge makes the next fetch a miss, a POP drill and an origin drill move the DNS
//! answers away and back, the requests' logs reach the SQLite store, and SIGTERM stops
//! everything cleanly with every log file completed.
//!
//! The demo binds fixed loopback addresses, so this file holds one test. Every wait is
//! a poll with a deadline; no sleep is an assertion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The state directory the README's tour uses; the test substitutes its own.
const README_STATE: &str = "/tmp/udn-demo";

/// The tour's DNS lines: (command, region, nearest POP's edge address).
const DIG_REGIONS: [(&str, &str, &str); 3] = [
    (
        "dig +short -b 127.0.41.1 @127.0.0.2 -p 5353 cdn.shop.udn.example",
        "europe",
        "127.0.0.11",
    ),
    (
        "dig +short -b 127.0.42.1 @127.0.0.2 -p 5353 cdn.shop.udn.example",
        "america",
        "127.0.0.12",
    ),
    (
        "dig +short -b 127.0.43.1 @127.0.0.3 -p 5353 cdn.shop.udn.example",
        "asia",
        "127.0.0.13",
    ),
];
const DIG_GTM: &str = "dig +short -b 127.0.41.1 @127.0.0.2 -p 5353 www.shop.udn.example";
const CURL_PAGE: &str = "curl -si --resolve cdn.shop.udn.example:8080:127.0.0.11 http://cdn.shop.udn.example:8080/index.html | grep -i x-cache";
const PURGE: &str = r#"curl -s --cacert /tmp/udn-demo/control/pki/self/ca.pem --cert /tmp/udn-demo/control/pki/self/cert.pem --key /tmp/udn-demo/control/pki/self/key.pem -d '{"scope":"url","target":"http://cdn.shop.udn.example/index.html","seq":1}' https://127.0.0.11:9443/v1/purge"#;
const FTP_GET: &str =
    "curl -s -u anonymous@cdn.shop.udn.example: ftp://127.0.0.11:2121/index.html | head -3";
const FFPROBE: &str = r#"ffprobe -v error -headers 'Host: cdn.shop.udn.example' -show_entries stream=codec_name,width,height -of csv=p=0 http://127.0.0.11:8080/live/master.m3u8 | head -1"#;
const LIVE_TOKEN: &str = r#"TOKEN=$(curl -s --cacert /tmp/udn-demo/control/tls/portal-cert.pem -H 'content-type: application/json' -d '{"username":"shop","password":"udn-demo-shop"}' https://127.0.0.5:8443/v1/auth/token | sed 's/.*"token":"\([^"]*\)".*/\1/')"#;
const LIVE_EVENT: &str = r#"curl -s --cacert /tmp/udn-demo/control/tls/portal-cert.pem -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"hostname":"cdn.shop.udn.example","playlist_url":"http://cdn.shop.udn.example/live/master.m3u8","starts_at":'$(( $(date +%s) * 1000 + 120000 ))'}' https://127.0.0.5:8443/v1/live-events"#;
const DRILLS: [&str; 4] = [
    "demo drill pop-down fra",
    "demo drill pop-up fra",
    "demo drill origin-fail shop-west-1",
    "demo drill origin-restore shop-west-1",
];
const BILLING: &str = "demo billing --state-dir /tmp/udn-demo";
const SQL: &str = r#"sqlite3 /tmp/udn-demo/control/udn.sqlite "SELECT pop, outcome, status FROM raw_http WHERE path = '/index.html' ORDER BY ts""#;

/// How long DNS may take to move away from a failed server: the service test runs
/// every 2 s with a 1.5 s timeout and 3 failures make it down (sample config), plus the
/// probes' reporting and a loaded machine's slack.
const DETECTION_BOUND: Duration = Duration::from_secs(30);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(line: &str, state: &Path) -> String {
    let line = line.replace(README_STATE, state.to_str().unwrap());
    let out = Command::new("sh").args(["-c", &line]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < within, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn udn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(args)
        .output()
        .unwrap()
}

use crate::ONE_DEMO;

fn start_demo(dir: &Path, extra: &[&str]) -> Demo {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["demo", "--state-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(&args)
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    Demo { child }
}

fn drill(line: &str) -> String {
    let out = udn(&line.split(' ').collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "udn {line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn readme_tour_runs_against_the_demo() {
    for tool in ["dig", "curl"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed (scripts/install-deps.sh)");
            return;
        }
    }
    let _turn = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("udn-demo-test-{}", std::process::id()));
    let demo = start_demo(&dir, &[]);

    // endpoints.json describes what runs.
    let ep: serde_json::Value = poll("endpoints.json", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(dir.join("endpoints.json")).ok()?;
        serde_json::from_str(&text).ok()
    });
    assert_eq!(ep["zone"], "udn.example");
    assert_eq!(
        ep["dns"],
        serde_json::json!(["127.0.0.2:5353", "127.0.0.3:5353"])
    );
    assert_eq!(ep["edges"].as_array().unwrap().len(), 3);
    for e in ep["edges"].as_array().unwrap() {
        let ip = e["http"].as_str().unwrap().trim_start_matches("http://");
        let ip = ip.split(':').next().unwrap();
        assert_eq!(e["ftp"], format!("ftp://{ip}:2121/"), "{e}");
    }
    assert_eq!(ep["regions"].as_array().unwrap().len(), 3);
    assert!(
        ep["sample_urls"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("http://cdn.shop.udn.example/index.html"))
    );
    for (_, region, edge) in DIG_REGIONS {
        let r = ep["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == region)
            .unwrap();
        let pop = r["nearest_pop"].as_str().unwrap();
        let e = ep["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["pop"] == pop)
            .unwrap();
        assert_eq!(e["http"], format!("http://{edge}:8080"));
    }

    // Each POP's probe serves its status from the POP's address, over its admin
    // listener to the control plane's certificate (the demo enrolled it into
    // <state>/control/pki/self); a caller without one is refused.
    let probes = ep["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3);
    let me = dir.join("control").join("pki").join("self");
    let pem = |f: &str| me.join(f).display().to_string();
    for p in probes {
        let url = format!("{}/v1/status", p["http"].as_str().unwrap());
        assert!(url.starts_with("https://"), "{url}");
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--cacert", &pem("ca.pem"), &url])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{url}");
        let out = Command::new("curl")
            .args(["-s", "--cacert", &pem("ca.pem"), "--cert", &pem("cert.pem")])
            .args(["--key", &pem("key.pem"), &url])
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["pop"], p["pop"], "{url}");
    }

    // DNS answers per region go to the nearest POP once the probes have measured.
    for (line, region, edge) in DIG_REGIONS {
        poll(
            &format!("{region} answered {edge}"),
            Duration::from_secs(45),
            || (sh(line, &dir) == edge).then_some(()),
        );
    }
    // The GTM hostname: Europe's nearest origin is shop-west (its POP is fra).
    poll("europe's origin", Duration::from_secs(30), || {
        (sh(DIG_GTM, &dir) == "127.0.0.22").then_some(())
    });

    // The CDN: a miss, then a hit; a purge; a miss again.
    assert_eq!(sh(CURL_PAGE, &dir).to_ascii_lowercase(), "x-cache: miss");
    assert_eq!(sh(CURL_PAGE, &dir).to_ascii_lowercase(), "x-cache: hit");
    let purged = sh(PURGE, &dir);
    assert!(purged.contains("\"applied\":true"), "purge: {purged}");
    assert_eq!(sh(CURL_PAGE, &dir).to_ascii_lowercase(), "x-cache: miss");

    // The same page over FTP from the same edge: the same bytes as over HTTP.
    let over_ftp = sh(FTP_GET, &dir);
    let over_http = sh(
        "curl -s --resolve cdn.shop.udn.example:8080:127.0.0.11 http://cdn.shop.udn.example:8080/index.html | head -3",
        &dir,
    );
    assert!(!over_ftp.is_empty(), "FTP download gave nothing");
    assert_eq!(over_ftp, over_http, "FTP and HTTP bodies differ");

    // The live HLS stream plays through the edge (ffprobe reads its playlists and a
    // segment).
    if have("ffprobe") {
        poll(
            "ffprobe of the live stream",
            Duration::from_secs(30),
            || (sh(FFPROBE, &dir) == "h264,128,72").then_some(()),
        );
    } else {
        eprintln!("ffprobe not installed: the README's stream step was not run");
    }
    assert_eq!(
        ep["streams"][0],
        "http://cdn.shop.udn.example/live/master.m3u8"
    );

    // A POP drill moves Europe away from fra (to nyc, next nearest) and back.
    let (europe, _, fra) = DIG_REGIONS[0];
    assert!(drill(DRILLS[0]).contains("down"));
    let t = Instant::now();
    poll("europe moved off fra", DETECTION_BOUND, || {
        (sh(europe, &dir) == "127.0.0.12").then_some(())
    });
    eprintln!("pop-down fra: DNS moved in {:?}", t.elapsed());
    assert!(drill(DRILLS[1]).contains("up"));
    let t = Instant::now();
    poll("europe back on fra", DETECTION_BOUND, || {
        (sh(europe, &dir) == fra).then_some(())
    });
    eprintln!("pop-up fra: DNS came back in {:?}", t.elapsed());

    // An origin drill moves the GTM answer to the other origin.
    assert!(drill(DRILLS[2]).contains("fails"));
    let t = Instant::now();
    poll("www moved off shop-west-1", DETECTION_BOUND, || {
        (sh(DIG_GTM, &dir) == "127.0.0.21").then_some(())
    });
    eprintln!("origin-fail shop-west-1: DNS moved in {:?}", t.elapsed());
    assert!(drill(DRILLS[3]).contains("passes"));
    let status: serde_json::Value = {
        let api = ep["drill"].as_str().unwrap();
        let out = Command::new("curl")
            .args(["-s", &format!("{api}/v1/drill")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(status["origins_failing"], serde_json::json!([]));
    assert_eq!(status["pops_down"], serde_json::json!([]));

    // The logs of these requests reach the store (log files complete after 10 s).
    let db = dir.join("control").join("udn.sqlite");
    let (outcomes, dns_rows) = poll("logs in the store", Duration::from_secs(60), || {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        let mut st = c
            // (The edge's own `fill` records, one per origin fetch, are not client requests.)
            .prepare("SELECT outcome FROM raw_http WHERE path = '/index.html' AND pop = 'fra' AND outcome <> 'fill' ORDER BY ts")
            .ok()?;
        let outcomes: Vec<String> = st
            .query_map([], |r| r.get(0))
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let dns: i64 = c
            .query_row(
                "SELECT count(*) FROM raw_dns WHERE hostname = 'cdn.shop.udn.example'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        let probes: i64 = c
            .query_row("SELECT count(*) FROM raw_probe", [], |r| r.get(0))
            .ok()?;
        (outcomes.len() >= 3 && dns > 0 && probes > 0).then_some((outcomes, dns))
    });
    assert_eq!(
        outcomes[..3]
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>(),
        ["miss", "hit", "miss"],
        "{outcomes:?}"
    );
    assert!(dns_rows > 0);
    if have("sqlite3") {
        let rows = sh(SQL, &dir);
        assert!(rows.lines().count() >= 3, "{rows}");
        assert!(rows.contains("fra|"), "{rows}");
    } else {
        eprintln!("sqlite3 not installed: the README's store query was not run");
    }

    // The portal logs in over HTTPS (trusting only the certificate the control plane
    // generated on first start), and the 24 h CDN chart shows the requests above.
    // Each control-plane URL is named by what it is.
    for key in ["collector", "portal", "api", "internal_api"] {
        assert!(ep["control"][key].is_string(), "control.{key}: {ep}");
    }
    assert_eq!(
        ep["control"]["api"].as_str().unwrap(),
        format!("{}v1/", ep["control"]["portal"].as_str().unwrap())
    );
    let portal = ep["control"]["portal"]
        .as_str()
        .expect("portal URL in endpoints.json")
        .trim_end_matches('/')
        .to_string();
    // The instance credentials the demo enrolled from its CA (<state>/control/pki).
    let pki = ep["pki"].as_object().expect("pki map in endpoints.json");
    for key in ["control", "edge-fra", "dns-dns1", "probe-fra"] {
        let d = pki.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        assert!(
            Path::new(d).join("cert.pem").exists() && Path::new(d).join("key.pem").exists(),
            "{key}: {pki:?}"
        );
    }
    let cred = ep["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "customer")
        .expect("a customer login in endpoints.json")
        .clone();
    udn_bins::install_crypto();
    let pem = std::fs::read(dir.join("control").join("tls").join("portal-cert.pem")).unwrap();
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let token: serde_json::Value = https
        .post(format!("{portal}/v1/auth/token"))
        .json(&serde_json::json!({"username": cred["username"], "password": cred["password"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["token"].as_str().expect("portal login").to_string();
    let hits = poll(
        "CDN traffic in the 24 h chart",
        Duration::from_secs(60),
        || {
            let v: serde_json::Value = https
                .get(format!("{portal}/v1/traffic/cdn"))
                .bearer_auth(&token)
                .send()
                .ok()?
                .json()
                .ok()?;
            let hits: u64 = v["points"]
                .as_array()?
                .iter()
                .filter_map(|p| p["hits"].as_u64())
                .sum();
            (hits >= 3).then_some(hits)
        },
    );
    assert!(hits >= 3);

    // A live event registered with the README's two commands is prefilled by all
    // three edges.
    let created = sh(&format!("{LIVE_TOKEN}\n{LIVE_EVENT}"), &dir);
    assert!(created.contains("\"total\":3"), "{created}");
    poll(
        "the live event prefilled on every edge",
        Duration::from_secs(60),
        || {
            let v: serde_json::Value = https
                .get(format!("{portal}/v1/live-events"))
                .bearer_auth(&token)
                .send()
                .ok()?
                .json()
                .ok()?;
            (v[0]["prefilled"] == 3).then_some(())
        },
    );
    // A browser session (cookie login) sees the chart page.
    let browser = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .cookie_store(true)
        .build()
        .unwrap();
    let login = browser
        .post(format!("{portal}/v1/auth/login"))
        .json(&serde_json::json!({"username": cred["username"], "password": cred["password"]}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let page = browser
        .get(format!("{portal}/activity/cdn"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().unwrap().contains("<svg"),
        "the chart page draws an SVG"
    );

    // The control plane's scheduler bills the last full hour a few seconds after the
    // demo starts, without any command: the invoice shows in the portal.
    let last_hour =
        udn_billing::Period::containing(udn_billing::PeriodKind::Hour, udn_bins::logging::now())
            .unwrap()
            .previous()
            .unwrap();
    let scheduled = poll(
        "the scheduler's invoice of the last full hour",
        Duration::from_secs(60),
        || {
            let v: serde_json::Value = https
                .get(format!("{portal}/v1/invoices"))
                .bearer_auth(&token)
                .send()
                .ok()?
                .json()
                .ok()?;
            v.as_array()?
                .iter()
                .find(|i| i["period_start"] == serde_json::json!(last_hour.start.as_millis()))
                .and_then(|i| i["number"].as_str().map(str::to_owned))
        },
    );
    // `udn demo billing` bills it (or shows the scheduler's invoice) and prints it.
    let line = BILLING.replace(README_STATE, dir.to_str().unwrap());
    let billed = drill(&line);
    assert!(billed.contains("\"shop\""), "{billed}");
    assert!(billed.contains(&scheduled), "{billed}");
    assert!(billed.contains("Invoice INV-"), "{billed}");
    assert!(billed.contains("Total"), "{billed}");
    // The customer sees the issued invoice in the portal.
    let number = billed
        .split_whitespace()
        .find(|w| w.starts_with("INV-"))
        .expect("an invoice number")
        .to_string();
    let invoices: serde_json::Value = https
        .get(format!("{portal}/v1/invoices"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(invoices.to_string().contains(&number), "{invoices}");

    // A probe revoked with `udn control revoke` is refused by the demo's DNS servers
    // (they share the control plane's revocation list) and accepted before.
    let probe_pki = Path::new(pki["probe-fra"].as_str().unwrap());
    let probe = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(probe_pki.join("ca.pem")).unwrap(),
        )
        .unwrap()])
        .identity(
            reqwest::Identity::from_pem(
                &[
                    std::fs::read(probe_pki.join("cert.pem")).unwrap(),
                    std::fs::read(probe_pki.join("key.pem")).unwrap(),
                ]
                .concat(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let dns_api = ep["dns_http"][0].as_str().expect("a DNS API").to_owned();
    let report = || {
        probe
            .post(format!("{dns_api}/v1/metrics"))
            .json(&serde_json::json!([]))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(report(), 200, "the demo's probe reports to {dns_api}");
    let out = udn(&[
        "control",
        "revoke",
        "fra",
        "--role",
        "probe",
        "--data-dir",
        dir.join("control").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    poll("the revoked probe refused", Duration::from_secs(10), || {
        (report() != 200).then_some(())
    });

    // SIGTERM stops everything and completes every open log file.
    let mut demo = demo;
    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = poll("demo exit", Duration::from_secs(30), || {
        demo.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "demo exited with {status}");
    let stdout = std::fs::read_to_string(dir.join("stdout.txt")).unwrap();
    assert!(stdout.contains("udn demo: stopped"), "{stdout}");
    let open = walk(&dir.join("logs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".open"))
        .collect::<Vec<_>>();
    assert!(open.is_empty(), "log files left open: {open:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--traffic`: each region's simulated client ends up fetching the sample page from
/// its nearest POP's edge, and those requests reach the store.
#[test]
fn background_traffic_goes_to_each_regions_nearest_pop() {
    if !have("dig") {
        eprintln!("skipped: dig is not installed (scripts/install-deps.sh)");
        return;
    }
    let _turn = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("udn-demo-traffic-{}", std::process::id()));
    let demo = start_demo(&dir, &["--traffic"]);
    let ep: serde_json::Value = poll("endpoints.json", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(dir.join("endpoints.json")).ok()?;
        serde_json::from_str(&text).ok()
    });
    assert!(
        ep["roles"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("traffic"))
    );
    let db = dir.join("control").join("udn.sqlite");
    let pairs = [
        ("127.0.41.%", "fra"),
        ("127.0.42.%", "nyc"),
        ("127.0.43.%", "sin"),
    ];
    poll(
        "traffic of every region at its nearest POP in the store",
        Duration::from_secs(90),
        || {
            let c = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            for (client, pop) in pairs {
                let n: i64 = c
                    .query_row(
                        "SELECT count(*) FROM raw_http WHERE client LIKE ?1 AND pop = ?2 \
                         AND path = '/index.html' AND status = 200",
                        [client, pop],
                        |r| r.get(0),
                    )
                    .ok()?;
                if n == 0 {
                    return None;
                }
            }
            Some(())
        },
    );
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every command the test runs is in the README's tour, literally.
#[test]
fn readme_tour_lists_the_tested_commands() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let tour = readme
        .split_once("## Guided tour")
        .expect("README has a `## Guided tour` section")
        .1;
    let mut lines: Vec<&str> = DIG_REGIONS.iter().map(|(l, ..)| *l).collect();
    lines.extend([
        DIG_GTM, CURL_PAGE, PURGE, FTP_GET, FFPROBE, LIVE_TOKEN, LIVE_EVENT, SQL,
    ]);
    lines.extend(DRILLS);
    lines.push(BILLING);
    for l in lines {
        assert!(tour.contains(l), "README's tour lacks `{l}`");
    }
    assert!(tour.contains(&format!("demo --state-dir {README_STATE}")));
}
