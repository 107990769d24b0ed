//! Certificate pinning: the agent accepts exactly the coordinator certificate whose
//! SHA-256 fingerprint its token carries, instead of validating a chain to a public CA.
//! The handshake signature is still verified against that certificate's key, so a
//! man-in-the-middle holding a copy of the certificate but not the key fails.
//!
//! A cluster of coordinators pins its own CA instead: each member presents its
//! certificate followed by the cluster CA's, and the agent accepts the chain when the CA
//! certificate is the pinned one and it signed the member's certificate (checked by
//! webpki with that CA as the only root). A lone coordinator's self-signed certificate
//! matches the pin directly, as before.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::token::{cert_fingerprint, constant_time_eq};

/// A [`ServerCertVerifier`] that accepts one certificate, or the certificates one CA
/// signed, identified by fingerprint.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// Pin `fingerprint` (SHA-256 of the DER certificate).
    pub fn new(fingerprint: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            fingerprint,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Expiry and names are deliberately not checked: the pin *is* the identity.
        if constant_time_eq(&cert_fingerprint(end_entity), &self.fingerprint) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(ca) = intermediates
            .iter()
            .find(|c| constant_time_eq(&cert_fingerprint(c), &self.fingerprint))
        else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::*;
    use crate::client::SERVER_NAME;

    fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.distinguished_name.push(DnType::CommonName, "test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap().der().clone();
        (cert, Issuer::new(p, key))
    }

    fn leaf(issuer: Option<&Issuer<'_, KeyPair>>) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        match issuer {
            Some(i) => p.signed_by(&key, i).unwrap().der().clone(),
            None => p.self_signed(&key).unwrap().der().clone(),
        }
    }

    fn verify(
        pin: &CertificateDer<'_>,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
    ) -> bool {
        let v = PinnedCertVerifier::new(
            cert_fingerprint(pin),
            Arc::new(rustls::crypto::ring::default_provider()),
        );
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_pinned_self_signed_certificate_verifies() {
        let c = leaf(None);
        assert!(verify(&c, &c, &[]));
        assert!(!verify(&leaf(None), &c, &[]));
    }

    #[test]
    fn a_member_certificate_signed_by_the_pinned_ca_verifies() {
        let (ca_cert, issuer) = ca();
        let member = leaf(Some(&issuer));
        assert!(verify(&ca_cert, &member, std::slice::from_ref(&ca_cert)));
        // Without the CA in the chain the agent cannot check the signature.
        assert!(!verify(&ca_cert, &member, &[]));
    }

    #[test]
    fn a_certificate_the_pinned_ca_did_not_sign_is_refused() {
        let (ca_cert, _) = ca();
        let (other_ca, other) = ca();
        // Sending the pinned CA along does not make a stranger's certificate valid.
        assert!(!verify(
            &ca_cert,
            &leaf(None),
            std::slice::from_ref(&ca_cert)
        ));
        assert!(!verify(
            &ca_cert,
            &leaf(Some(&other)),
            std::slice::from_ref(&ca_cert)
        ));
        assert!(!verify(
            &ca_cert,
            &leaf(Some(&other)),
            std::slice::from_ref(&other_ca)
        ));
    }
}
