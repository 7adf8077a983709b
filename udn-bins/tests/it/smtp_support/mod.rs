//! A real SMTP server for tests: Python's aiosmtpd on a free loopback port, storing
//! what it receives in a Maildir (installed by scripts/install-deps.sh).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use udn_bins::billing::{SmtpConfig, SmtpSecurity};

/// A Python interpreter that has aiosmtpd (installed by scripts/install-deps.sh).
pub fn python_with_aiosmtpd() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_owned();
        }
    }
    panic!("no python3 with aiosmtpd: run scripts/install-deps.sh (pip install aiosmtpd)");
}

/// aiosmtpd on a free loopback port, killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(maildir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python_with_aiosmtpd())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            child,
            port,
            maildir: maildir.to_owned(),
        }
    }

    pub fn config(&self) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "UDN Billing <billing@udn.example>".into(),
            timeout_secs: 10,
        }
    }

    /// Messages received so far, as raw RFC 5322 text.
    pub fn received(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        dir.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The decoded text body of a raw message (Python's `email` parser undoes the transfer
/// encoding).
pub fn text_body(raw: &str) -> String {
    use std::io::Write as _;
    const SCRIPT: &str = "import sys, email, email.policy\n\
m = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)\n\
sys.stdout.write(m.get_body(preferencelist=('plain',)).get_content())\n";
    let mut child = Command::new(python_with_aiosmtpd())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "no text body in {raw}");
    String::from_utf8(out.stdout).unwrap()
}
