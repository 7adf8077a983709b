//! Running the real `udn` binary and asking real DNS servers with `dig`, shared by the
//! integration tests: a child-process guard, start-and-read-the-address-lines, and a
//! `dig +short` wrapper.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) on drop, so a failing test leaves nothing running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `udn ARGS` and returns it with the first `n` lines of its stdout (where the
/// roles print their bound addresses); stdout keeps being drained afterwards so the
/// process never blocks on a full pipe.
pub fn udn_with_lines(args: &[&str], n: usize) -> (Killed, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start udn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let guard = Killed(child);
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut l = String::new();
        out.read_line(&mut l).expect("read udn's stdout");
        assert!(
            !l.is_empty(),
            "udn {args:?} exited after printing {lines:?}"
        );
        lines.push(l.trim().to_string());
    }
    std::thread::spawn(move || for _ in out.lines() {});
    (guard, lines)
}

/// Starts `udn dns ARGS --listen 127.0.0.1:0` and returns it with the address it
/// serves DNS on, as it printed it (a port the kernel chose: one probed free over TCP
/// may be taken over UDP by a parallel test).
pub fn udn_dns(args: &[&str]) -> (Killed, SocketAddr) {
    let mut all = vec!["dns"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
    let (child, lines) = udn_with_lines(&all, 1);
    (child, addr_after(&lines[0], "udn dns: serving DNS on "))
}

/// The address after `prefix` in a role's stdout line (`udn dns: serving DNS on
/// 127.0.0.1:5353 (UDP and TCP)`).
pub fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    line.strip_prefix(prefix)
        .and_then(|r| r.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} names an address after {prefix:?}"))
}

/// `dig @server -p port NAME A +short` (one try, 2 s): the answer lines.
pub fn dig_short(server: SocketAddr, name: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            name,
            "A",
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .expect("dig (bind9-dnsutils) is installed");
    // Only answer lines: dig prints ";; communications error ..." on stdout when the
    // server is not there, which must not read as an answer.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_owned)
        .collect()
}
