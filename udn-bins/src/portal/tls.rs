//! HTTPS for the portal: a configured certificate, or a self-signed one generated on
//! first start and kept next to the database so browsers see the same one after a
//! restart; and the TLS accept loop (tokio-rustls + hyper-util, rustls `ring`).

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the portal's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given by the operator.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// A self-signed certificate for `names`, generated into `dir` on first start
    /// (`portal-cert.pem`, `portal-key.pem`) and reused afterwards.
    SelfSigned {
        /// Directory holding the generated files.
        dir: PathBuf,
        /// DNS names and IP addresses the certificate is for.
        names: Vec<String>,
    },
}

/// Loads or generates the certificate and builds the rustls server config (HTTP/1.1
/// and h2 by ALPN). Returns the config and the certificate PEM (for clients that pin
/// it, such as tests).
pub fn server_config(src: &CertSource) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    let (cert_path, key_path) = match src {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::SelfSigned { dir, names } => {
            let cert = dir.join("portal-cert.pem");
            let key = dir.join("portal-key.pem");
            if !cert.exists() || !key.exists() {
                generate(&cert, &key, names)?;
            }
            (cert, key)
        }
    };
    let cert_pem = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading key {}", key_path.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), cert_pem))
}

fn generate(cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<()> {
    let names = if names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        names.to_vec()
    };
    let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    write_private(key, &ck.signing_key.serialize_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    tracing::info!(
        "generated a self-signed portal certificate {}",
        cert.display()
    );
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Serves `app` over HTTPS on `addr` until the returned task is aborted, with the
/// listener limits of [`crate::listener::Limits`]. Every request carries
/// `ConnectInfo<SocketAddr>` (for login rate limiting) and the marker that makes session
/// cookies `Secure`.
pub async fn serve_https(
    addr: SocketAddr,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::listener::bind_and_serve(
        addr,
        app,
        Some(crate::listener::Tls {
            config: tls,
            revoked: Default::default(),
        }),
        crate::listener::Limits::default(),
    )
    .await
}
