//! Identifiers: 128-bit random ids for nodes, devices and routes, and the
//! agent-chosen replica id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 128-bit random identifier, shown as a UUID-shaped lowercase hex string
/// (`8-4-4-4-12`). Random rather than sequential so ids of deleted objects are never
/// reused and cannot be guessed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(pub [u8; 16]);

impl Id {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not an [`Id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an id: expected 32 hex digits, optionally UUID-dashed")]
pub struct ParseIdError;

impl FromStr for Id {
    type Err = ParseIdError;

    /// 32 hex digits, or 36 characters dashed as [`Id`]'s `Display` does (`8-4-4-4-12`).
    /// Dashes elsewhere are refused, so one id has exactly two spellings (per case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const DASHES: [usize; 4] = [8, 13, 18, 23];
        let b = s.as_bytes();
        let mut hex = [0u8; 32];
        match b.len() {
            32 => hex.copy_from_slice(b),
            36 if DASHES.iter().all(|&i| b[i] == b'-') => {
                let digits = b.iter().enumerate().filter(|(i, _)| !DASHES.contains(i));
                for (h, (_, d)) in hex.iter_mut().zip(digits) {
                    *h = *d;
                }
            }
            _ => return Err(ParseIdError),
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(ParseIdError)?;
            let lo = hex_val(pair[1]).ok_or(ParseIdError)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Longest replica id the coordinator accepts.
pub const MAX_REPLICA_ID_LEN: usize = 64;

/// A fresh replica id for an agent's state dir: the agent generates it once, stores it,
/// and presents it on every connection so the coordinator keeps its Mesh IP stable.
pub fn new_replica_id() -> String {
    Id::random().to_string()
}

/// Whether `s` is an acceptable replica id: 1..=64 characters of `[A-Za-z0-9._-]`.
/// Restricted so it is safe in logs, metrics labels and store keys.
pub fn valid_replica_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REPLICA_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_display() {
        let id = Id::random();
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<Id>().unwrap(), id);
        assert_eq!(s.replace('-', "").parse::<Id>().unwrap(), id);
    }

    #[test]
    fn bad_ids_are_rejected() {
        for s in ["", "xyz", "00000000-0000-0000-0000-00000000000g", "0000"] {
            assert!(s.parse::<Id>().is_err(), "{s}");
        }
        // Found by the `parse` fuzz target: dashes anywhere were dropped, so these
        // parsed as the all-zero id.
        let zeros = "0".repeat(32);
        for s in [
            format!("-{zeros}"),
            format!("{zeros}----"),
            format!("0-0-{}", &zeros[2..]),
        ] {
            assert!(s.parse::<Id>().is_err(), "{s}");
        }
        assert_eq!(format!("{}", Id([0; 16])).parse::<Id>(), Ok(Id([0; 16])));
        assert_eq!(zeros.parse::<Id>(), Ok(Id([0; 16])));
    }

    #[test]
    fn replica_ids() {
        assert!(valid_replica_id(&new_replica_id()));
        assert!(!valid_replica_id(""));
        assert!(!valid_replica_id("a b"));
        assert!(!valid_replica_id(&"a".repeat(65)));
    }
}
