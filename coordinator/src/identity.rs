//! The data directory: created on first start with the TLS identity, the admin token
//! and the token-derivation key, each written once and mode 0600.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context as _, Result};
use rand::RngCore as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Everything the coordinator keeps on disk besides the store.
pub struct Identity {
    /// DER certificate: self-signed alone, or a cluster member's, signed by `ca`.
    pub cert: CertificateDer<'static>,
    /// The cluster CA that signed `cert`, sent along in the handshake (cluster only).
    pub ca: Option<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of `cert` (alone) or of `ca` (cluster): what tokens pin.
    pub fingerprint: [u8; 32],
    /// The REST API bearer token.
    pub admin_token: String,
    /// Key for deriving token secrets (see [`crate::registry`]).
    pub token_key: [u8; 32],
}

impl Identity {
    /// The certificate chain the QUIC endpoint presents.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert.clone())
            .chain(self.ca.clone())
            .collect()
    }

    /// The QUIC stateless-reset key, derived from `token_key` so that it survives a
    /// restart: a restarted coordinator then answers packets of its predecessor's
    /// connections with a reset the agents accept, and they reconnect at once instead of
    /// waiting out the idle timeout. The label keeps it apart from token secrets.
    pub fn reset_key(&self) -> [u8; 32] {
        use hmac::{Hmac, Mac as _};
        let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(&self.token_key)
            .expect("HMAC takes keys of any length");
        mac.update(b"meshgate quic stateless reset v1");
        mac.finalize().into_bytes().into()
    }
}

pub(crate) fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Load the identity from `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<Identity> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create data dir {}", dir.display()))?;
    let (cert_p, key_p) = (dir.join("cert.der"), dir.join("key.der"));
    if !cert_p.exists() {
        let ck =
            rcgen::generate_simple_self_signed(vec![meshgate_proto::client::SERVER_NAME.into()])
                .context("failed to generate the TLS certificate")?;
        // Key first: a crash between the two writes leaves no certificate without a key.
        write_secret(&key_p, &ck.signing_key.serialize_der())?;
        write_secret(&cert_p, ck.cert.der())?;
    }
    let cert = CertificateDer::from(fs::read(&cert_p).context("failed to read cert.der")?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        fs::read(&key_p).context("failed to read key.der")?,
    ));
    let admin_p = dir.join("admin-token");
    if !admin_p.exists() {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        write_secret(&admin_p, format!("{}\n", hex(&b)).as_bytes())?;
    }
    let admin_token = fs::read_to_string(&admin_p)
        .context("failed to read admin-token")?
        .trim()
        .to_owned();
    let tk_p = dir.join("token-key");
    if !tk_p.exists() {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        write_secret(&tk_p, &b)?;
    }
    let token_key: [u8; 32] = fs::read(&tk_p)
        .context("failed to read token-key")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("token-key must be 32 bytes"))?;
    let fingerprint = meshgate_proto::token::cert_fingerprint(&cert);
    Ok(Identity {
        cert,
        ca: None,
        key,
        fingerprint,
        admin_token,
        token_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_key_survives_a_restart_and_is_not_a_token_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.reset_key(), again.reset_key());
        assert_ne!(first.reset_key(), first.token_key);
        let other = load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(first.reset_key(), other.reset_key());
    }
}
