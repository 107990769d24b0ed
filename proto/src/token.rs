//! The enrolment token codec.
//!
//! A token is one opaque base64url string (no padding) that carries everything an agent
//! needs to join: its kind (node or device), the node's or device's id, a 256-bit secret,
//! the coordinator's address(es) and the SHA-256 fingerprint of the coordinator's
//! certificate, so the agent can pin that certificate without a CA.
//!
//! Binary layout before base64url (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 3 | magic `MGT` |
//! | 1 | token format version, currently 1 |
//! | 1 | kind: 1 = node, 2 = device |
//! | 16 | id |
//! | 32 | secret |
//! | 32 | SHA-256 of the coordinator's DER certificate |
//! | 1 | number of addresses, 1..=8 |
//! | per address: 1 + n | length n (1..=255), then `HOST:PORT` in UTF-8 |
//!
//! The coordinator stores only [`Token::secret_hash`], never the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::Id;

const MAGIC: &[u8; 3] = b"MGT";
const FORMAT_VERSION: u8 = 1;
/// Most coordinator addresses one token may carry.
pub const MAX_ADDRS: usize = 8;
/// Longest token string accepted; bounds the work a garbage input can cause.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token enrols. Lowercase in JSON; postcard carries the variant index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A gateway node; all its replicas share the token.
    Node,
    /// A client device.
    Device,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Node => 1,
            Kind::Device => 2,
        }
    }
}

/// A decoded enrolment token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Node or device.
    pub kind: Kind,
    /// The node's or device's id.
    pub id: Id,
    /// The 256-bit shared secret.
    pub secret: [u8; 32],
    /// `HOST:PORT` strings the agent dials, in order.
    pub addrs: Vec<String>,
    /// SHA-256 of the coordinator certificate (DER) the agent must see.
    pub fingerprint: [u8; 32],
}

// Hand-written so the secret never lands in a log line.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// A token (or any secret) as text, e.g. as given on a command line or carried in a
/// message: `Debug` and `Display` show only its length, so no log line or panic message
/// can leak it. On the wire it is the plain string (`serde(transparent)`).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret itself, for the one place that needs it (decoding, sending).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {} characters>", self.0.len())
    }
}

impl std::fmt::Display for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// Why a string is not a valid token. Each variant is a distinct error so the agent (and
/// a human) can tell a truncated copy-paste from a token for another protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string is empty or only whitespace.
    #[error("token is empty")]
    Empty,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is too long ({0} characters)")]
    TooLong(usize),
    /// Not base64url.
    #[error("token is not valid base64url")]
    NotBase64,
    /// Does not start with the meshgate magic bytes.
    #[error("not a meshgate token (bad magic)")]
    BadMagic,
    /// A token format version this build does not understand.
    #[error("unsupported token version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte is neither node nor device.
    #[error("unknown token kind {0}")]
    UnknownKind(u8),
    /// The bytes end before the fields do (e.g. a truncated copy).
    #[error("token is truncated")]
    Truncated,
    /// Zero or more than [`MAX_ADDRS`] addresses.
    #[error("token carries {0} coordinator addresses (need 1..=8)")]
    BadAddressCount(usize),
    /// An address is empty, not UTF-8, or lacks a `:PORT`.
    #[error("token carries an invalid coordinator address")]
    BadAddress,
    /// Bytes left over after the last field.
    #[error("token has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl Token {
    /// A token with a fresh random secret.
    pub fn generate(kind: Kind, id: Id, addrs: Vec<String>, fingerprint: [u8; 32]) -> Self {
        Self {
            kind,
            id,
            secret: rand::random(),
            addrs,
            fingerprint,
        }
    }

    /// The base64url string form.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(MAGIC);
        b.push(FORMAT_VERSION);
        b.push(self.kind.to_byte());
        b.extend_from_slice(&self.id.0);
        b.extend_from_slice(&self.secret);
        b.extend_from_slice(&self.fingerprint);
        let addrs: Vec<&String> = self
            .addrs
            .iter()
            .filter(|a| !a.is_empty() && a.len() <= 255)
            .take(MAX_ADDRS)
            .collect();
        b.push(addrs.len() as u8); // at most MAX_ADDRS, fits
        for a in addrs {
            b.push(a.len() as u8); // filtered to <= 255 above
            b.extend_from_slice(a.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Parse a token string. Never panics; surrounding whitespace is ignored.
    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(s.len()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::NotBase64)?;
        let mut r = Reader(&bytes);
        if r.take(3).ok_or(TokenError::BadMagic)? != MAGIC {
            return Err(TokenError::BadMagic);
        }
        let version = r.byte()?;
        if version != FORMAT_VERSION {
            return Err(TokenError::UnsupportedVersion(version));
        }
        let kind = match r.byte()? {
            1 => Kind::Node,
            2 => Kind::Device,
            k => return Err(TokenError::UnknownKind(k)),
        };
        let id = Id(r.array()?);
        let secret = r.array()?;
        let fingerprint = r.array()?;
        let n = usize::from(r.byte()?);
        if n == 0 || n > MAX_ADDRS {
            return Err(TokenError::BadAddressCount(n));
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(r.byte()?);
            let raw = r.take(len).ok_or(TokenError::Truncated)?;
            let a = std::str::from_utf8(raw).map_err(|_| TokenError::BadAddress)?;
            if a.is_empty() || !valid_host_port(a) {
                return Err(TokenError::BadAddress);
            }
            addrs.push(a.to_owned());
        }
        if !r.0.is_empty() {
            return Err(TokenError::TrailingBytes(r.0.len()));
        }
        Ok(Self {
            kind,
            id,
            secret,
            addrs,
            fingerprint,
        })
    }

    /// SHA-256 of the secret: what the coordinator stores and compares against.
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }
}

/// SHA-256 of a token secret. A fast hash is enough: the secret is 256 random bits, so
/// there is nothing to brute-force that a slow password hash would protect.
pub fn hash_secret(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// SHA-256 of a DER certificate: the fingerprint a token pins.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Compare two hashes in time independent of where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `HOST:PORT` with a non-empty host and a numeric port (IPv6 hosts in brackets).
fn valid_host_port(a: &str) -> bool {
    match a.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn byte(&mut self) -> Result<u8, TokenError> {
        self.take(1).map(|b| b[0]).ok_or(TokenError::Truncated)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let s = self.take(N).ok_or(TokenError::Truncated)?;
        // `take` returned exactly N bytes.
        Ok(s.try_into().expect("slice of length N"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let token = Token::generate(Kind::Node, Id::random(), vec!["h:1".into()], [9; 32]);
        let text = token.encode();
        let secret = SecretText::new(text.clone());
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{token:?}"),
            format!("{:?}", Some(&secret)),
        ] {
            assert!(!shown.contains(&text), "{shown}");
            assert!(
                !shown.contains(&URL_SAFE_NO_PAD.encode(token.secret)),
                "{shown}"
            );
        }
        assert_eq!(secret.expose(), text);
        let wire = postcard::to_allocvec(&secret).unwrap();
        assert_eq!(
            wire,
            postcard::to_allocvec(&text).unwrap(),
            "plain on the wire"
        );
    }
    use proptest::prelude::*;

    fn sample() -> Token {
        Token::generate(
            Kind::Node,
            Id::random(),
            vec!["127.0.0.1:7443".into(), "[::1]:7443".into()],
            [7; 32],
        )
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.encode();
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Token::decode(&s).unwrap(), t);
        assert_eq!(Token::decode(&format!("  {s}\n")).unwrap(), t);
    }

    #[test]
    fn distinct_errors() {
        let s = sample().encode();
        assert_eq!(Token::decode(""), Err(TokenError::Empty));
        assert_eq!(Token::decode("!!!"), Err(TokenError::NotBase64));
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(b"XYZ\x01")),
            Err(TokenError::BadMagic)
        );
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(b"MGT\x09")),
            Err(TokenError::UnsupportedVersion(9))
        );
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(b"MGT\x01\x05")),
            Err(TokenError::UnknownKind(5))
        );
        assert_eq!(Token::decode(&s[..40]), Err(TokenError::Truncated));
        assert_eq!(
            Token::decode(&"A".repeat(5000)),
            Err(TokenError::TooLong(5000))
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        raw.push(0);
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(TokenError::TrailingBytes(1))
        );
        let mut none = URL_SAFE_NO_PAD.decode(&s).unwrap();
        none.truncate(3 + 1 + 1 + 16 + 32 + 32);
        none.push(0);
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&none)),
            Err(TokenError::BadAddressCount(0))
        );
        let mut bad = none.clone();
        *bad.last_mut().unwrap() = 1;
        bad.extend_from_slice(b"\x04host");
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(&bad)),
            Err(TokenError::BadAddress)
        );
    }

    #[test]
    fn debug_hides_secret() {
        let t = sample();
        assert!(!format!("{t:?}").contains("secret"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,300}") {
            let _ = Token::decode(&s);
        }

        #[test]
        fn decode_random_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Token::decode(&URL_SAFE_NO_PAD.encode(&b));
        }
    }
}
