//! Machine identity: the instance CA of `udn control`, the certificates it issues to each
//! role instance (`udn control enroll ROLE NAME`), and the mutual-TLS configuration every
//! role-to-role channel uses.
//!
//! One mechanism everywhere (docs/security.md): every admin listener (collector, config
//! distribution, DNS and probe control APIs, the edge's purge and prefill) serves TLS with
//! a certificate issued by the instance CA and asks the caller for one too. The caller's
//! role and name are in its certificate (subject CN `ROLE/NAME`); a handler admits the
//! roles it serves ([`require_roles`]). Revocation is by certificate fingerprint: the
//! control plane keeps the list in `<data-dir>/pki/instances.json` and hands it to every
//! role with each configuration answer, so a revoked instance is refused within one
//! configuration interval.
//!
//! Files of an enrolled instance (a directory given to the role as `--pki DIR`):
//! `cert.pem` (the instance's certificate), `key.pem` (its private key, mode 0600) and
//! `ca.pem` (the instance CA, the only root the role trusts on these channels).

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The roles an instance certificate can be issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceRole {
    /// `udn control`: pushes purges and prefills to edges, asks probes for page checks.
    Control,
    /// `udn dns`: ships DNS logs, fetches configuration.
    Dns,
    /// `udn edge`: ships HTTP logs, fetches configuration.
    Edge,
    /// `udn probe`: reports metrics to DNS servers, ships probe logs, fetches configuration.
    Probe,
    /// `udn loadp`: reports the load of the host a server runs on, for the server named
    /// as the identity, and nothing else.
    Loadp,
}

impl InstanceRole {
    /// Every role, in a stable order.
    pub const ALL: [InstanceRole; 5] = [
        InstanceRole::Control,
        InstanceRole::Dns,
        InstanceRole::Edge,
        InstanceRole::Probe,
        InstanceRole::Loadp,
    ];

    /// The name used in certificates, on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceRole::Control => "control",
            InstanceRole::Dns => "dns",
            InstanceRole::Edge => "edge",
            InstanceRole::Probe => "probe",
            InstanceRole::Loadp => "loadp",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s form.
    pub fn parse(s: &str) -> Option<InstanceRole> {
        InstanceRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for InstanceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InstanceRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        InstanceRole::parse(s).ok_or_else(|| {
            format!("unknown role {s:?} (expected one of control, dns, edge, probe, loadp)")
        })
    }
}

/// Who is calling: the role and name from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The instance's role.
    pub role: InstanceRole,
    /// The instance's name (a POP, a DNS server name, ...).
    pub name: String,
    /// SHA-256 of the certificate (lowercase hex): the revocation key.
    pub fingerprint: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

/// A valid instance name: 1 to 63 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// SHA-256 of a certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    udn_core::hex::encode(&sha2::Sha256::digest(der))
}

/// The identity a certificate (already verified against the instance CA) names, from its
/// subject common name `ROLE/NAME`. `None` for a certificate without one.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let (role, name) = cn.split_once('/')?;
    let role = InstanceRole::parse(role)?;
    valid_name(name).then(|| Identity {
        role,
        name: name.to_owned(),
        fingerprint: fingerprint(der),
    })
}

/// The set of revoked certificate fingerprints, shared by a role's listeners and updated
/// when a configuration answer (or, on the control plane, `instances.json`) changes it.
/// Every change bumps a generation that [`Revocations::subscribe`] wakes on (the control
/// plane's configuration long-poll wakes the roles with it).
#[derive(Debug, Clone)]
pub struct Revocations {
    set: Arc<RwLock<HashSet<String>>>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            set: Arc::default(),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Revocations {
    /// Whether this fingerprint is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.set
            .read()
            .map(|s| s.contains(fingerprint))
            .unwrap_or(true)
    }

    /// Replaces the set; returns whether it changed.
    pub fn replace(&self, revoked: impl IntoIterator<Item = String>) -> bool {
        let new: HashSet<String> = revoked.into_iter().collect();
        let changed = match self.set.write() {
            Ok(mut g) if *g != new => {
                *g = new;
                true
            }
            _ => false,
        };
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// A receiver that is marked changed on every change of the set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A short digest of the set (16 hex digits of the SHA-256 of the sorted list; the
    /// same set always gives the same tag): part of the configuration answer's ETag.
    pub fn tag(&self) -> String {
        let d = sha2::Sha256::digest(self.list().join("\n").as_bytes());
        udn_core::hex::encode(&d[..8])
    }

    /// The revoked fingerprints, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .set
            .read()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An enrolled instance's credentials, loaded from its `--pki` directory: what it
/// presents and what it trusts on every machine channel.
#[derive(Clone)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<rustls::RootCertStore>,
    ca_pem: String,
    identity: Identity,
    dir: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads `cert.pem`, `key.pem` and `ca.pem` from `dir` (as written by
    /// `udn control enroll`). Fails with the file's name when one is missing or bad, or
    /// when the certificate names no UDN identity.
    pub fn load(dir: &Path) -> anyhow::Result<Credentials> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        let cert_pem = read("cert.pem")?;
        let key_pem = read("key.pem")?;
        let ca_pem = String::from_utf8(read("ca.pem")?).context("ca.pem is not text")?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}/cert.pem", dir.display()))?;
        let leaf = chain
            .first()
            .with_context(|| format!("{}/cert.pem holds no certificate", dir.display()))?;
        let identity = identity_of(leaf).with_context(|| {
            format!(
                "{}/cert.pem names no UDN instance (subject CN ROLE/NAME)",
                dir.display()
            )
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("parsing {}/key.pem", dir.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c = c.with_context(|| format!("parsing {}/ca.pem", dir.display()))?;
            roots
                .add(c)
                .with_context(|| format!("{}/ca.pem is not a CA certificate", dir.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "{}/ca.pem holds no certificate",
            dir.display()
        );
        Ok(Credentials {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            ca_pem,
            identity,
            dir: dir.to_owned(),
        })
    }

    /// Who these credentials say this instance is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The instance CA (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory the credentials were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// TLS for an admin listener: this instance's certificate, and a request for the
    /// caller's, verified against the instance CA. A caller without one still completes
    /// the handshake (so `/health` answers and a refusal is a clear 401), but every
    /// route other than `/health` requires an identity ([`require_roles`]).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("instance certificate and key do not match")?;
        // Machine channels are request/answer: HTTP/1.1 only (a refusal answered before
        // the body is read is a clean response, not an HTTP/2 stream reset).
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// TLS for a client on a machine channel: presents this instance's certificate and
    /// trusts only the instance CA.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("instance certificate and key do not match")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// A reqwest client for machine channels (HTTPS only, the instance CA as the only
    /// root, this instance's certificate presented).
    pub fn reqwest_client(&self, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.client_config()?)
            .https_only(true)
            // The peer's certificate, so a caller can check the peer's role too.
            .tls_info(true)
            .timeout(timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("building the machine-channel HTTP client")
    }
}

/// One issued certificate, as kept in `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Role.
    pub role: InstanceRole,
    /// Name.
    pub name: String,
    /// SHA-256 of the certificate (hex).
    pub fingerprint: String,
    /// Names and addresses the certificate is valid for as a server.
    pub sans: Vec<String>,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
    /// When it expires (Unix seconds).
    pub not_after: i64,
    /// When it was revoked (Unix seconds), if it was.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// The instance CA and its register of issued certificates, in `<data-dir>/pki/`:
/// `ca.pem`, `ca-key.pem` (mode 0600), `ca.json` (the CA's subject) and
/// `instances.json` (every certificate issued, with its revocation time).
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct CaMeta {
    common_name: String,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ca_params(common_name: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "UDN");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Writes `text` to `path` readable by its owner only (keys).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// What `udn control enroll` hands an instance.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The instance CA (PEM).
    pub ca_pem: String,
    /// The register entry.
    pub record: InstanceRecord,
}

impl Issued {
    /// Writes `cert.pem`, `key.pem` (0600) and `ca.pem` into `dir` (created).
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("cert.pem"), &self.cert_pem)
            .with_context(|| format!("writing {}/cert.pem", dir.display()))?;
        write_private(&dir.join("key.pem"), &self.key_pem)
            .with_context(|| format!("writing {}/key.pem", dir.display()))?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)
            .with_context(|| format!("writing {}/ca.pem", dir.display()))?;
        Ok(())
    }
}

impl Ca {
    /// Opens the CA in `dir`, creating it (a new P-256 key and a self-signed CA
    /// certificate valid for 20 years) on first start.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Ca> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        let meta_path = dir.join("ca.json");
        if !cert_path.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let cn = format!("UDN instance CA {}", crate::api::backend::random_hex(8));
            let key = rcgen::KeyPair::generate().context("generating the CA key")?;
            let mut params = ca_params(&cn);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(365 * 20);
            let cert = params.self_signed(&key).context("signing the CA")?;
            write_private(&key_path, &key.serialize_pem())
                .with_context(|| format!("writing {}", key_path.display()))?;
            std::fs::write(
                &meta_path,
                serde_json::to_string(&CaMeta {
                    common_name: cn.clone(),
                })?,
            )
            .with_context(|| format!("writing {}", meta_path.display()))?;
            std::fs::write(&cert_path, cert.pem())
                .with_context(|| format!("writing {}", cert_path.display()))?;
            tracing::info!("created the instance CA in {}", dir.display());
        }
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {}", key_path.display()))?;
        let meta: CaMeta = serde_json::from_slice(
            &std::fs::read(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?,
        )
        .with_context(|| format!("parsing {}", meta_path.display()))?;
        Ok(Ca {
            dir: dir.to_owned(),
            cert_pem,
            key,
            params: ca_params(&meta.common_name),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `role`/`name`, valid as a client and as a server for
    /// `sans` (DNS names or IP addresses), for `days`, and records it in
    /// `instances.json`. Enrolling a name again issues a new certificate; the old one
    /// stays valid until revoked.
    pub fn issue(
        &self,
        role: InstanceRole,
        name: &str,
        sans: &[String],
        days: u32,
    ) -> anyhow::Result<Issued> {
        anyhow::ensure!(
            valid_name(name),
            "instance name {name:?}: use 1 to 63 of a-z 0-9 . _ - starting with a letter or digit"
        );
        anyhow::ensure!((1..=3660).contains(&days), "--days must be 1 to 3660");
        let mut params = rcgen::CertificateParams::new(sans.to_vec())
            .context("a --san is neither an IP address nor a DNS name")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{role}/{name}"));
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "UDN");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(i64::from(days));
        let key = rcgen::KeyPair::generate().context("generating the instance key")?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the instance certificate")?;
        let record = InstanceRecord {
            role,
            name: name.to_owned(),
            fingerprint: fingerprint(cert.der()),
            sans: sans.to_vec(),
            issued_at: now_secs(),
            not_after: params.not_after.unix_timestamp(),
            revoked_at: None,
        };
        let mut all = self.instances()?;
        all.push(record.clone());
        self.save(&all)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            record,
        })
    }

    /// The credentials of `role`/`name` in `dir`: those already there when they name
    /// that instance and are not revoked, else newly issued ones (valid for a year).
    /// This is how `udn demo` enrolls its own roles.
    pub fn enroll_into(
        &self,
        role: InstanceRole,
        name: &str,
        sans: &[String],
        dir: &Path,
    ) -> anyhow::Result<Credentials> {
        if let Ok(c) = Credentials::load(dir) {
            let revoked = revoked_in(&self.dir)?;
            if c.identity().role == role
                && c.identity().name == name
                && c.ca_pem() == self.cert_pem
                && !revoked.contains(&c.identity().fingerprint)
            {
                return Ok(c);
            }
        }
        self.issue(role, name, sans, 365)?.write_to(dir)?;
        Credentials::load(dir)
    }

    fn instances_path(&self) -> PathBuf {
        self.dir.join("instances.json")
    }

    /// Every certificate issued, oldest first.
    pub fn instances(&self) -> anyhow::Result<Vec<InstanceRecord>> {
        read_instances(&self.instances_path())
    }

    fn save(&self, all: &[InstanceRecord]) -> anyhow::Result<()> {
        let p = self.instances_path();
        write_atomic(&p, &serde_json::to_string_pretty(all)?)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// Revokes every live certificate whose name or fingerprint is `what` (optionally of
    /// one role). Returns how many were revoked; 0 when none matched.
    pub fn revoke(&self, what: &str, role: Option<InstanceRole>) -> anyhow::Result<usize> {
        let mut all = self.instances()?;
        let now = now_secs();
        let mut n = 0;
        for r in &mut all {
            if r.revoked_at.is_none()
                && (r.name == what || r.fingerprint == what)
                && role.is_none_or(|x| x == r.role)
            {
                r.revoked_at = Some(now);
                n += 1;
            }
        }
        if n > 0 {
            self.save(&all)?;
        }
        Ok(n)
    }
}

fn read_instances(path: &Path) -> anyhow::Result<Vec<InstanceRecord>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The revoked fingerprints recorded in `<pki-dir>/instances.json`.
pub fn revoked_in(pki_dir: &Path) -> anyhow::Result<Vec<String>> {
    Ok(read_instances(&pki_dir.join("instances.json"))?
        .into_iter()
        .filter(|r| r.revoked_at.is_some())
        .map(|r| r.fingerprint)
        .collect())
}

/// Keeps `rev` in step with `<pki-dir>/instances.json` (read every `every`), so a
/// `udn control revoke` takes effect on the running control plane. Runs until aborted.
pub fn watch_revocations(
    pki_dir: PathBuf,
    rev: Revocations,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match revoked_in(&pki_dir) {
                Ok(list) => {
                    if rev.replace(list) {
                        tracing::info!(
                            "instance revocations changed: {} revoked",
                            rev.list().len()
                        );
                    }
                }
                Err(e) => tracing::warn!("revocations: {e:#}; keeping the previous list"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// The instance identity of the server that answered `resp` (from its TLS certificate;
/// the client must be built with `tls_info`, as [`Credentials::reqwest_client`] is).
pub fn server_identity(resp: &reqwest::Response) -> Option<Identity> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .and_then(identity_of)
}

/// The caller of a request on a listener served by [`crate::listener`]: its address and,
/// when it presented a valid, unrevoked instance certificate, its identity.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub addr: std::net::SocketAddr,
    /// The verified instance identity, if any.
    pub identity: Option<Identity>,
}

/// An axum middleware admitting only callers with an instance identity of one of
/// `roles`: 401 without a client certificate, 403 naming the role otherwise. `/health`
/// is always admitted.
///
/// ```ignore
/// router.layer(axum::middleware::from_fn(move |req, next| {
///     udn_bins::pki::require_roles(&[InstanceRole::Probe], req, next)
/// }))
/// ```
pub async fn require_roles(
    roles: &'static [InstanceRole],
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<Peer>().cloned();
    match peer.as_ref().and_then(|p| p.identity.as_ref()) {
        Some(id) if roles.contains(&id.role) => next.run(req).await,
        Some(id) => {
            refusal_log(
                peer.as_ref(),
                &format!("role {} may not call {}", id.role, req.uri().path()),
            );
            (
                axum::http::StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({
                    "error": format!(
                        "instance {id} (role {}) may not call this endpoint; allowed roles: {}",
                        id.role,
                        roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })),
            )
                .into_response()
        }
        None => {
            refusal_log(peer.as_ref(), "no instance certificate");
            (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({
                    "error": "this is a machine channel: present a UDN instance certificate \
                              (udn control enroll ROLE NAME)"
                })),
            )
                .into_response()
        }
    }
}

/// Logs a refusal at most once per peer address per minute (a flood of refused requests
/// does not flood the log). The table is bounded: it is cleared when it holds 4,096
/// addresses.
pub fn refusal_log(peer: Option<&Peer>, reason: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static SEEN: Mutex<Option<HashMap<std::net::IpAddr, Instant>>> = Mutex::new(None);
    let ip = peer.map(|p| p.addr.ip());
    let now = Instant::now();
    let log = match (ip, SEEN.lock()) {
        (Some(ip), Ok(mut g)) => {
            let m = g.get_or_insert_with(HashMap::new);
            if m.len() >= 4096 {
                m.clear();
            }
            match m.get(&ip) {
                Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
                _ => {
                    m.insert(ip, now);
                    true
                }
            }
        }
        _ => true,
    };
    if log {
        match peer {
            Some(p) => tracing::warn!("refused {}: {reason}", p.addr),
            None => tracing::warn!("refused: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_instance_and_verify_against_the_ca() {
        let dir = std::env::temp_dir().join(format!("udn-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::load_or_create(&dir.join("ca")).unwrap();
        let issued = ca
            .issue(InstanceRole::Edge, "fra", &["127.0.0.11".into()], 30)
            .unwrap();
        issued.write_to(&dir.join("fra")).unwrap();
        let creds = Credentials::load(&dir.join("fra")).unwrap();
        assert_eq!(creds.identity().role, InstanceRole::Edge);
        assert_eq!(creds.identity().name, "fra");
        assert_eq!(creds.identity().fingerprint, issued.record.fingerprint);
        creds.server_config().unwrap();
        creds.client_config().unwrap();
        // A reopened CA signs certificates its old root still verifies.
        let again = Ca::load_or_create(&dir.join("ca")).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(ca.revoke("fra", None).unwrap(), 1);
        assert_eq!(
            revoked_in(&dir.join("ca")).unwrap(),
            vec![issued.record.fingerprint]
        );
        assert_eq!(ca.revoke("fra", None).unwrap(), 0);
        assert!(ca.issue(InstanceRole::Edge, "Bad Name", &[], 30).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("fra"));
        assert!(valid_name("dns1.example"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
