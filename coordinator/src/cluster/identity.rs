//! The cluster's shared identity, kept in etcd: the token key, the admin token and a
//! cluster CA. The first member on an empty prefix creates it with a create-if-absent
//! transaction, so two first members racing agree on one; every other member reads it.
//!
//! Tokens pin the CA's fingerprint, and each member presents a certificate of its own
//! signed by the CA (made afresh at every start, so no member key is ever shared or
//! stored), so a token made by any member verifies on all of them.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, hex};
use crate::store::{Compare, Op, Store};

/// The key (under the cluster root) that holds the shared identity.
const KEY: &str = "identity";

/// What every member shares. Secrets, like the token key in a lone coordinator's data
/// dir: whoever can read the etcd prefix can act as the cluster.
#[derive(Serialize, Deserialize)]
struct Shared {
    /// DER of the CA certificate, base64.
    ca_cert: String,
    /// PKCS#8 DER of the CA key, base64.
    ca_key: String,
    admin_token: String,
    /// 32 bytes, base64.
    token_key: String,
}

/// The CA's parameters; rebuilt by every member to sign its own certificate, so they
/// must be the same as when the CA certificate was made (they are constants).
fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name
        .push(DnType::CommonName, "meshgate cluster CA");
    Ok(p)
}

impl Shared {
    fn generate() -> Result<Self> {
        let key = KeyPair::generate().context("failed to make the cluster CA key")?;
        let cert = ca_params()?
            .self_signed(&key)
            .context("failed to make the cluster CA")?;
        let mut admin = [0u8; 32];
        rand::rng().fill_bytes(&mut admin);
        let mut token_key = [0u8; 32];
        rand::rng().fill_bytes(&mut token_key);
        Ok(Self {
            ca_cert: B64.encode(cert.der()),
            ca_key: B64.encode(key.serialize_der()),
            admin_token: hex(&admin),
            token_key: B64.encode(token_key),
        })
    }
}

/// Read the cluster's identity from `meta` (creating it if this member is the first)
/// and make this member's certificate. Writes `DIR/admin-token` (0600).
pub fn load_or_create(meta: &dyn Store, dir: &Path, member: &str) -> Result<Identity> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create data dir {}", dir.display()))?;
    if meta.get(KEY)?.is_none() {
        let mine = serde_json::to_vec(&Shared::generate()?).context("identity serialises")?;
        // Losing this race is fine: the winner's identity is read back below.
        let won = meta
            .txn(&[Compare::Absent(KEY.into())], &[Op::put(KEY, mine)])?
            .is_some();
        tracing::info!(won, "created the cluster identity in etcd");
    }
    let stored = meta
        .get(KEY)?
        .context("the cluster identity vanished from etcd")?;
    let shared: Shared =
        serde_json::from_slice(&stored.value).context("the cluster identity in etcd is corrupt")?;
    let ca_der = CertificateDer::from(B64.decode(&shared.ca_cert).context("ca_cert")?);
    let ca_key = KeyPair::try_from(B64.decode(&shared.ca_key).context("ca_key")?.as_slice())
        .context("the cluster CA key in etcd is not a usable key")?;
    let token_key: [u8; 32] = B64
        .decode(&shared.token_key)
        .context("token_key")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the cluster token key must be 32 bytes"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let (cert, key) = member_cert(member, &issuer)?;
    write_admin_token(dir, &shared.admin_token)?;
    Ok(Identity {
        cert,
        ca: Some(ca_der.clone()),
        key,
        fingerprint: meshgate_proto::token::cert_fingerprint(&ca_der),
        admin_token: shared.admin_token,
        token_key,
    })
}

fn member_cert(
    member: &str,
    ca: &Issuer<'_, KeyPair>,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let mut p = CertificateParams::new(vec![meshgate_proto::client::SERVER_NAME.to_owned()])?;
    p.distinguished_name.push(DnType::CommonName, member);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().context("failed to make the member key")?;
    let cert = p
        .signed_by(&key, ca)
        .context("failed to sign the member certificate")?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// Replace `DIR/admin-token` atomically (a reader never sees half a token), mode 0600.
fn write_admin_token(dir: &Path, token: &str) -> Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(".admin-token.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("admin-token")).context("failed to write admin-token")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::redb::RedbStore;

    #[test]
    fn members_share_one_identity_and_each_verifies_under_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let meta = RedbStore::open(&dir.path().join("meta.redb")).unwrap();
        let a = load_or_create(&meta, &dir.path().join("a"), "a").unwrap();
        let b = load_or_create(&meta, &dir.path().join("b"), "b").unwrap();
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.token_key, b.token_key);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.cert, b.cert);
        for (id, d) in [(&a, "a"), (&b, "b")] {
            let file = dir.path().join(d).join("admin-token");
            assert_eq!(fs::read_to_string(&file).unwrap().trim(), a.admin_token);
            let mode = fs::metadata(&file).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            let verifier = meshgate_proto::pin::PinnedCertVerifier::new(
                id.fingerprint,
                Arc::new(rustls::crypto::ring::default_provider()),
            );
            let chain = id.cert_chain();
            let name = rustls::pki_types::ServerName::try_from(meshgate_proto::client::SERVER_NAME)
                .unwrap();
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &verifier,
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        }
    }
}
