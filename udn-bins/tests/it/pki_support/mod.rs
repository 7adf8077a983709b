//! Instance identities for tests, made the way an operator makes them: the real
//! `udn control enroll ROLE NAME --out DIR --san IP --data-dir D` CLI. Gives curl its
//! arguments and reqwest a client presenting the certificate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A control plane data directory (its instance CA) and the identities enrolled from it.
pub struct Pki {
    /// `--data-dir` of `udn control` (the CA is in its `pki/`).
    pub data_dir: PathBuf,
}

impl Pki {
    /// A fresh CA in `dir` (created by the first enrollment).
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        Pki {
            data_dir: dir.to_path_buf(),
        }
    }

    /// `udn control enroll ROLE NAME --out <data_dir>/ids/ROLE-NAME --san ...`; returns
    /// the directory (give it to the role as `--pki DIR`).
    pub fn enroll(&self, role: &str, name: &str, sans: &[&str]) -> PathBuf {
        let out = self.data_dir.join("ids").join(format!("{role}-{name}"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_udn"));
        c.args(["control", "enroll", role, name, "--out"])
            .arg(&out)
            .arg("--data-dir")
            .arg(&self.data_dir);
        for s in sans {
            c.args(["--san", s]);
        }
        let o = c.output().expect("udn control enroll runs");
        assert!(
            o.status.success(),
            "udn control enroll {role} {name}: {o:?}"
        );
        out
    }

    /// `udn control revoke NAME --data-dir D`.
    pub fn revoke(&self, name: &str) {
        let o = Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["control", "revoke", name, "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("udn control revoke runs");
        assert!(o.status.success(), "udn control revoke {name}: {o:?}");
    }
}

/// The identities most tests need, made once per test binary: a CA, a DNS server
/// (`dns`, SAN 127.0.0.1), a probe (`fra`), a control plane (`control`) and an edge
/// (`fra-edge-1`, a valid identity of the wrong role for the DNS and probe APIs).
pub struct Ids {
    pub pki: Pki,
    pub dns: PathBuf,
    pub probe: PathBuf,
    pub control: PathBuf,
    pub edge: PathBuf,
}

pub fn ids() -> &'static Ids {
    static IDS: OnceLock<Ids> = OnceLock::new();
    IDS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "udn-pki-support-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let pki = Pki::new(&dir);
        let loopback = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.31", "::1"];
        Ids {
            dns: pki.enroll("dns", "dns", &loopback),
            probe: pki.enroll("probe", "fra", &loopback),
            control: pki.enroll("control", "control", &loopback),
            edge: pki.enroll("edge", "fra-edge-1", &loopback),
            pki,
        }
    })
}

/// curl's arguments to present the identity in `dir` and trust only its CA.
pub fn curl_args(dir: &Path) -> Vec<String> {
    vec![
        "--cacert".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        dir.join("cert.pem").display().to_string(),
        "--key".into(),
        dir.join("key.pem").display().to_string(),
    ]
}

/// curl's arguments for a stranger: trusts the CA (so TLS completes) but has no
/// certificate of its own.
pub fn curl_stranger(dir: &Path) -> Vec<String> {
    vec!["--cacert".into(), dir.join("ca.pem").display().to_string()]
}

/// A blocking reqwest client presenting the identity in `dir` (trusting only its CA).
pub fn reqwest_blocking(dir: &Path) -> reqwest::blocking::Client {
    udn_bins::install_crypto();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut pem = std::fs::read(dir.join("cert.pem")).unwrap();
    pem.extend(std::fs::read(dir.join("key.pem")).unwrap());
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}
