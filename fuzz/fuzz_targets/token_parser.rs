//! Feed arbitrary strings (and arbitrary bytes as base64url) to the token parser. It
//! must never panic; any token it accepts must re-encode to an equal token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_proto::Token;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(t) = Token::decode(s)
    {
        assert_eq!(Token::decode(&t.encode()).expect("round trip"), t);
    }
    use base64::Engine as _;
    let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    if let Ok(t) = Token::decode(&s) {
        assert_eq!(Token::decode(&t.encode()).expect("round trip"), t);
    }
});
