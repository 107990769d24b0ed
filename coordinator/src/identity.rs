//! The data directory: created on first start with the TLS identity, the admin token
//! and the token-derivation key, each written once, crash-safely (temporary file, fsync,
//! rename, fsync of the directory) and mode 0600. Loading refuses secrets that other
//! users can read, an empty or short admin token and a malformed token key, each with
//! what to do about it.

mod secrets;

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use secrets::MIN_ADMIN_TOKEN_LEN;
use secrets::{admin_token, read_secret, token_key};
pub(crate) use secrets::{hex, write_secret};

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

/// Load the identity from `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<Identity> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create data dir {}", dir.display()))?;
    let (cert, key) = tls_identity(dir)?;
    let admin_token = admin_token(dir)?;
    let token_key = token_key(dir)?;
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

/// The TLS certificate and key, generated when neither is there. A key without a
/// certificate is what a crash between the two writes leaves (the key goes first, and no
/// token can pin a certificate never written), so it is replaced; a certificate without
/// its key cannot be repaired here.
fn tls_identity(dir: &Path) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let (cert_p, key_p) = (dir.join("cert.der"), dir.join("key.der"));
    match (cert_p.exists(), key_p.exists()) {
        (true, false) => anyhow::bail!(
            "{} exists but {} does not: the TLS identity is incomplete. Restore key.der \
             from a backup of this data dir. Only if this coordinator never issued a token: \
             delete cert.der and start again (a new identity invalidates every token).",
            cert_p.display(),
            key_p.display()
        ),
        (false, key_left) => {
            if key_left {
                tracing::warn!(
                    key = %key_p.display(),
                    "found a TLS key without its certificate (a crash during the first start); generating both anew"
                );
            }
            let ck = rcgen::generate_simple_self_signed(vec![
                meshgate_proto::client::SERVER_NAME.into(),
            ])
            .context("failed to generate the TLS certificate")?;
            write_secret(&key_p, &ck.signing_key.serialize_der())?;
            write_secret(&cert_p, ck.cert.der())?;
        }
        (true, true) => {}
    }
    let cert = CertificateDer::from(fs::read(&cert_p).context("failed to read cert.der")?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read_secret(&key_p)?));
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

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

    fn err(dir: &Path) -> String {
        match load_or_create(dir) {
            Ok(_) => panic!("{} was accepted", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn an_empty_or_short_admin_token_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        for bad in ["", "\n", "short-token\n"] {
            write_secret(&path, bad.as_bytes()).unwrap();
            let e = err(dir.path());
            assert!(
                e.contains("admin-token") && e.contains("at least 32"),
                "{e}"
            );
        }
        fs::remove_file(&path).unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert_eq!(
            id.admin_token.len(),
            64,
            "a deleted token is generated anew"
        );
    }

    #[test]
    fn an_admin_token_no_http_client_can_send_is_refused() {
        // Found by the `identity_files` fuzz target: these loaded, but the API reads the
        // token from a header (`HeaderValue::to_str`), so no request could ever match.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let long = "a".repeat(MIN_ADMIN_TOKEN_LEN);
        for bad in [
            format!("{long}\u{e9}"),
            format!("{long}\0x"),
            format!("{long}\nx"),
        ] {
            write_secret(&path, bad.as_bytes()).unwrap();
            let e = err(dir.path());
            assert!(e.contains("printable ASCII"), "{bad:?}: {e}");
        }
        let fine = format!("{long} with\tspaces~!\n");
        write_secret(&path, fine.as_bytes()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap().admin_token, fine.trim());
    }

    #[test]
    fn a_short_or_constant_token_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-key");
        write_secret(&path, b"").unwrap();
        assert!(err(dir.path()).contains("holds 0 bytes"));
        write_secret(&path, &[0; 32]).unwrap();
        assert!(err(dir.path()).contains("same byte"));
    }

    #[test]
    fn secrets_open_to_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        for name in ["admin-token", "token-key", "key.der"] {
            let path = dir.path().join(name);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let e = err(dir.path());
            assert!(e.contains(name) && e.contains("chmod 600"), "{e}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        load_or_create(dir.path()).unwrap();
    }

    #[test]
    fn a_key_without_its_certificate_recovers_and_the_reverse_says_what_to_do() {
        // A crash between the key and the certificate of the first start.
        let dir = tempfile::tempdir().unwrap();
        write_secret(&dir.path().join("key.der"), b"half-written identity").unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert_eq!(
            load_or_create(dir.path()).unwrap().fingerprint,
            id.fingerprint
        );
        // A certificate whose key is lost.
        fs::remove_file(dir.path().join("key.der")).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("Restore key.der") && e.contains("delete cert.der"),
            "{e}"
        );
    }

    #[test]
    fn files_are_written_whole_with_mode_0600_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["admin-token", "cert.der", "key.der", "token-key"]);
        for name in &names {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}
