//! HTTPS: a rustls server config (ring provider) choosing the certificate by SNI.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A certificate for some hostnames, from PEM files.
#[derive(Debug, Clone)]
pub struct TlsCert {
    /// The hostnames (SNI) it serves; the first certificate is also the default.
    pub hostnames: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug)]
struct BySni {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .cloned()
            .or_else(|| self.default.clone())
    }
}

fn bad(what: &str, path: &std::path::Path) -> crate::Error {
    crate::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what} {}", path.display()),
    ))
}

/// Builds the HTTPS server config (ALPN h2 and http/1.1) for `certs`.
pub fn tls_config(certs: &[TlsCert]) -> Result<Arc<rustls::ServerConfig>, crate::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut r = BySni {
        by_name: HashMap::new(),
        default: None,
    };
    for c in certs {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
            .map_err(|_| bad("cannot read certificates from", &c.cert))?
            .collect::<Result<_, _>>()
            .map_err(|_| bad("bad certificate PEM in", &c.cert))?;
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|_| bad("cannot read private key from", &c.key))?;
        let signer = provider.key_provider.load_private_key(key)?;
        let ck = Arc::new(CertifiedKey::new(chain, signer));
        for h in &c.hostnames {
            r.by_name.insert(h.to_ascii_lowercase(), ck.clone());
        }
        if r.default.is_none() {
            r.default = Some(ck);
        }
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(r));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
