//! The `udn` command line: real help, and the demo's endpoints.json.

use std::process::Command;

fn udn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_udn"))
}

#[test]
fn help_lists_every_role() {
    let out = udn().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for role in ["dns", "edge", "probe", "control", "demo"] {
        assert!(text.contains(role), "--help lacks {role}: {text}");
    }
    for role in ["dns", "edge", "probe", "control", "demo"] {
        let out = udn().args([role, "--help"]).output().unwrap();
        assert!(out.status.success(), "udn {role} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: udn"));
    }
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = udn().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn demo_writes_endpoints_json() {
    let dir = std::env::temp_dir().join(format!("udn-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = udn()
        .args(["demo", "--no-wait", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("endpoints.json")).unwrap()).unwrap();
    assert_eq!(ep["zone"], "udn.example");
    assert_eq!(ep["gtm_hostnames"][0], "www.shop.udn.example");
    assert_eq!(ep["cdn_hostnames"][0], "cdn.shop.udn.example");
    for key in ["dns", "edges", "origins", "sample_urls", "credentials"] {
        assert!(ep[key].is_array(), "endpoints.json lacks {key}");
    }
    // The control plane's URLs are named; with --no-wait it has not started.
    assert!(ep["control"].is_object(), "{ep}");
    assert!(ep["control"]["collector"].is_null(), "{ep}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_rejects_a_bad_config_with_the_field_path() {
    let dir = std::env::temp_dir().join(format!("udn-cli-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[[gtm]]\nhostname = \"x.example\"\ncustomer = \"nobody\"\nservice = \"http\"\ntargets = []\n",
    )
    .unwrap();
    let out = udn()
        .args(["demo", "--no-wait", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gtm[0].customer"), "{err}");
    assert!(err.contains("gtm[0].targets"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
