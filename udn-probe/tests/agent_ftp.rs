//! FTP service tests against a real FTP server (Python's pyftpdlib, started on loopback
//! by the test; scripts/install-deps.sh installs it): retrieval with its content
//! checked and its phases timed, `SIZE` only, a missing file, a refused login, a server
//! that stalls, and a hostile server whose `PASV` reply names another host (the FTP
//! bounce), which the probe must not connect to.

use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use udn_core::config::ServiceConfig;
use udn_probe::agent::service::run_test;
use udn_probe::service::{FailPhase, ServiceSpec, VerdictReason};

fn spec(toml_text: &str) -> ServiceSpec {
    let cfg: ServiceConfig = toml::from_str(toml_text).unwrap();
    ServiceSpec::from_config(&cfg).unwrap()
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("udn-ftp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// pyftpdlib serving `dir` read-only at `ip:port`, killed on drop.
struct FtpServer {
    child: Child,
    port: u16,
}

impl FtpServer {
    fn start(ip: &str, dir: &Path, login: Option<(&str, &str)>) -> FtpServer {
        let port = free_port(ip);
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pyftpdlib", "-i", ip, "-p", &port.to_string()])
            .arg("-d")
            .arg(dir);
        if let Some((u, p)) = login {
            cmd.args(["-u", u, "-P", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pyftpdlib: run scripts/install-deps.sh");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pyftpdlib did not start on {ip}:{port} (pip install pyftpdlib)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        FtpServer { child, port }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn ftp_test_retrieves_checks_and_times_the_file() {
    let dir = temp_dir("retr");
    std::fs::write(dir.join("health.txt"), b"status: ok v7\n").unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let server = FtpServer::start("127.0.0.1", &dir, None);
    let s = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"/health.txt\"\nexpect_content = \"ok\"\nexpect_regex = \"v[0-9]+\"",
        server.port
    ));
    let obs = run_test(&s, LOCAL).await;
    assert_eq!(obs.error, None);
    assert_eq!(obs.status, Some(226));
    assert_eq!(obs.body_prefix, b"status: ok v7\n");
    assert!(
        obs.headers.contains(&("size".into(), "14".into())),
        "{obs:?}"
    );
    assert!(obs.phases.connect > Duration::ZERO, "{:?}", obs.phases);
    assert!(obs.phases.wait > Duration::ZERO, "{:?}", obs.phases);
    let v = s.evaluate(&obs);
    assert!(v.ok, "{v:?}");
    assert!(v.response_ms > 0.0);

    // The content is checked: another expected text fails the test.
    let wrong = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"/health.txt\"\nexpect_content = \"degraded\"",
        server.port
    ));
    assert_eq!(
        wrong.evaluate(&run_test(&wrong, LOCAL).await).reason,
        VerdictReason::ContentMissing
    );

    // A larger file is read to its end (receive is timed); only `expect_within` kept.
    let b = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"big.bin\"\nexpect_within = 100",
        server.port
    ));
    let obs = run_test(&b, LOCAL).await;
    assert!(b.evaluate(&obs).ok, "{obs:?}");
    assert_eq!(obs.body_prefix, big[..100]);
    assert!(obs.headers.contains(&("size".into(), "200000".into())));

    // Size only: no download, the size reported.
    let size = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"big.bin\"\nftp_retrieve = false",
        server.port
    ));
    let obs = run_test(&size, LOCAL).await;
    assert!(size.evaluate(&obs).ok, "{obs:?}");
    assert_eq!(obs.status, Some(213));
    assert!(obs.body_prefix.is_empty());
    assert!(obs.headers.contains(&("size".into(), "200000".into())));

    // A missing file is the server's refusal, 550.
    let missing = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"/gone.txt\"",
        server.port
    ));
    assert_eq!(
        missing.evaluate(&run_test(&missing, LOCAL).await).reason,
        VerdictReason::BadStatus(550)
    );
    drop(server);
    // ... and a server that is gone is a connect failure.
    assert_eq!(
        s.evaluate(&run_test(&s, LOCAL).await).reason,
        VerdictReason::Failed(FailPhase::Connect)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn ftp_test_logs_in_with_its_credentials() {
    let dir = temp_dir("login");
    std::fs::write(dir.join("health.txt"), b"ok").unwrap();
    let server = FtpServer::start("127.0.0.1", &dir, Some(("monitor", "s3cret")));
    let with = |user: &str, pass: &str| {
        spec(&format!(
            "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"health.txt\"\nexpect_content = \"ok\"\nftp_user = \"{user}\"\nftp_password = \"{pass}\"",
            server.port
        ))
    };
    let good = with("monitor", "s3cret");
    let v = good.evaluate(&run_test(&good, LOCAL).await);
    assert!(v.ok, "{v:?}");
    let bad = with("monitor", "guess");
    assert_eq!(
        bad.evaluate(&run_test(&bad, LOCAL).await).reason,
        VerdictReason::BadStatus(530)
    );
    // Anonymous login is refused by this server.
    let anon = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {}\npath = \"health.txt\"",
        server.port
    ));
    assert_eq!(
        anon.evaluate(&run_test(&anon, LOCAL).await).reason,
        VerdictReason::BadStatus(530)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scripted FTP server at `ip`: greets, accepts any login, and answers `PASV` with
/// `pasv_ip` (and the port of its own data listener); `RETR` sends `body`. With
/// `stall`, it greets and then never answers.
async fn hostile_server(
    ip: &str,
    pasv_ip: [u8; 4],
    body: &'static [u8],
    stall: bool,
) -> (u16, u16) {
    let control = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let data = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = control.local_addr().unwrap().port();
    let dport = data.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = control.accept().await {
            let (r, mut w) = c.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"220 hostile ready\r\n").await.unwrap();
            if stall {
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
            while let Ok(Some(line)) = lines.next_line().await {
                let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                let reply = match verb.as_str() {
                    "USER" => "331 password please\r\n".to_owned(),
                    "PASS" => "230 in\r\n".to_owned(),
                    "TYPE" => "200 binary\r\n".to_owned(),
                    "SIZE" => format!("213 {}\r\n", body.len()),
                    "PASV" => format!(
                        "227 Entering Passive Mode ({},{},{},{},{},{})\r\n",
                        pasv_ip[0],
                        pasv_ip[1],
                        pasv_ip[2],
                        pasv_ip[3],
                        dport >> 8,
                        dport & 0xff
                    ),
                    "RETR" => {
                        w.write_all(b"150 here it comes\r\n").await.unwrap();
                        let (mut d, _) = data.accept().await.unwrap();
                        d.write_all(body).await.unwrap();
                        drop(d);
                        "226 done\r\n".to_owned()
                    }
                    "QUIT" => "221 bye\r\n".to_owned(),
                    _ => "502 not here\r\n".to_owned(),
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    (port, dport)
}

#[tokio::test]
async fn a_pasv_reply_naming_another_host_is_not_followed() {
    // The attacker's server at 127.0.0.98 names 127.0.0.99 (standing for a host on the
    // provider's network) in its PASV reply, with its data port; a listener at that
    // address and port counts the connections it gets.
    let (port, dport) =
        hostile_server("127.0.0.98", [127, 0, 0, 99], b"ok from the server", false).await;
    let victim = tokio::net::TcpListener::bind(("127.0.0.99", dport))
        .await
        .unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = reached.clone();
    tokio::spawn(async move {
        while victim.accept().await.is_ok() {
            r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let s = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {port}\npath = \"f\"\nexpect_content = \"ok\""
    ));
    let server: IpAddr = "127.0.0.98".parse().unwrap();
    let obs = run_test(&s, server).await;
    // The data connection went to the server's own address (where its data listener
    // is), never to the address the reply named.
    assert!(s.evaluate(&obs).ok, "{obs:?}");
    assert_eq!(obs.body_prefix, b"ok from the server");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_stalling_server_fails_within_the_time_limit() {
    let (port, _) = hostile_server("127.0.0.97", [127, 0, 0, 97], b"", true).await;
    let s = spec(&format!(
        "name = \"ftp\"\nkind = \"ftp\"\nport = {port}\npath = \"f\"\ntimeout_ms = 300"
    ));
    let t = Instant::now();
    let obs = run_test(&s, "127.0.0.97".parse().unwrap()).await;
    assert_eq!(
        s.evaluate(&obs).reason,
        VerdictReason::Failed(FailPhase::Timeout)
    );
    assert!(obs.phases.connect > Duration::ZERO, "{:?}", obs.phases);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
