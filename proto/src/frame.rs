//! Framing of control messages on the QUIC stream.
//!
//! A frame is `len: u32 BE | version: u8 | payload`, where `len` counts the version byte
//! and the payload, and the payload is the message in postcard encoding.
//!
//! Why postcard and not JSON: control messages are small and frequent (a heartbeat every
//! 50 ms per replica), postcard's wire format is specified and stable across 1.x, it
//! encodes `Ipv4Addr`/`Ipv4Net` compactly, and a strict binary decoder is easy to fuzz.
//! The version byte lets a later encoding change be detected instead of misparsed.
//!
//! [`decode`] never panics and never allocates more than the frame it was given: lengths
//! above [`MAX_FRAME`] are refused before any buffering.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding version carried in every frame.
pub const FRAME_VERSION: u8 = 1;
/// Largest frame body (version byte + payload) accepted, in bytes. A route table of a
/// few thousand entries fits; anything bigger is an error, not a buffering request.
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest frame a coordinator reads before the peer's Hello is accepted: a Hello is a
/// few hundred bytes, so an unauthenticated peer cannot make it buffer [`MAX_FRAME`].
pub const MAX_HELLO_FRAME: usize = 16 * 1024;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not enough bytes yet for a whole frame (only from [`decode`]).
    #[error("incomplete frame")]
    Incomplete,
    /// The length prefix is zero (no room for the version byte).
    #[error("empty frame")]
    Empty,
    /// The length prefix exceeds [`MAX_FRAME`] (or the bound the reader was given).
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A frame version this build does not speak.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encode `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN + 1];
    out[HEADER_LEN] = FRAME_VERSION;
    let mut out =
        postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let body = out.len() - HEADER_LEN;
    if body > MAX_FRAME {
        return Err(FrameError::TooLarge(body));
    }
    // body <= MAX_FRAME < u32::MAX
    out[..HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Parse the length prefix: the body length that follows it.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    body_len_max(header, MAX_FRAME)
}

/// [`body_len`] with a smaller bound: [`MAX_HELLO_FRAME`] before a peer is authenticated.
pub fn body_len_max(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max.min(MAX_FRAME) {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decode a frame body (version byte + payload), as read after [`body_len`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Decode one frame from the front of `buf`; returns the message and the bytes used.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Incomplete);
    };
    let len = body_len(*header)?;
    let body = buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::Incomplete)?;
    Ok((decode_body(body)?, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_stream_split() {
        let a = AgentMsg::Heartbeat { seq: 42 };
        let b = AgentMsg::Goodbye;
        let mut buf = encode(&a).unwrap();
        buf.extend(encode(&b).unwrap());
        let (m1, used) = decode::<AgentMsg>(&buf).unwrap();
        assert_eq!(m1, a);
        let (m2, used2) = decode::<AgentMsg>(&buf[used..]).unwrap();
        assert_eq!(m2, b);
        assert_eq!(used + used2, buf.len());
        assert_eq!(
            decode::<AgentMsg>(&buf[..used - 1]),
            Err(FrameError::Incomplete)
        );
    }

    #[test]
    fn a_hello_fits_the_pre_authentication_bound_and_a_larger_frame_does_not() {
        let hello = AgentMsg::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            token: "x".repeat(200),
            replica_id: "r".repeat(64),
            lan: Some(LanInfo {
                ip: std::net::Ipv4Addr::BROADCAST,
                mac: [0xff; 6],
            }),
            agent_version: "v".repeat(64),
            seen_epoch: u64::MAX,
        });
        let len = encode(&hello).unwrap().len() - HEADER_LEN;
        assert!(len < MAX_HELLO_FRAME / 8, "a Hello is {len} bytes");
        let header = |n: usize| u32::try_from(n).unwrap().to_be_bytes();
        assert_eq!(
            body_len_max(header(MAX_HELLO_FRAME), MAX_HELLO_FRAME),
            Ok(MAX_HELLO_FRAME)
        );
        assert_eq!(
            body_len_max(header(MAX_HELLO_FRAME + 1), MAX_HELLO_FRAME),
            Err(FrameError::TooLarge(MAX_HELLO_FRAME + 1))
        );
        assert_eq!(
            body_len(header(MAX_HELLO_FRAME + 1)),
            Ok(MAX_HELLO_FRAME + 1)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(decode::<AgentMsg>(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            decode::<AgentMsg>(&[0xff, 0, 0, 0]),
            Err(FrameError::TooLarge(0xff00_0000))
        );
        assert_eq!(
            decode::<AgentMsg>(&[0, 0, 0, 1, 9]),
            Err(FrameError::UnsupportedVersion(9))
        );
        assert!(matches!(
            decode::<AgentMsg>(&[0, 0, 0, 2, 1, 200]),
            Err(FrameError::Malformed(_))
        ));
        let mut f = encode(&AgentMsg::Goodbye).unwrap();
        f[3] += 1;
        f.push(0);
        assert!(matches!(
            decode::<AgentMsg>(&f),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AgentMsg>(&b);
            let _ = decode::<CoordMsg>(&b);
        }

        #[test]
        fn heartbeat_round_trips(seq in any::<u64>()) {
            let m = AgentMsg::Heartbeat { seq };
            let f = encode(&m).unwrap();
            prop_assert_eq!(decode::<AgentMsg>(&f).unwrap(), (m, f.len()));
        }
    }
}
