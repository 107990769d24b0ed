//! Feed arbitrary bytes to the control-frame decoder, both directions. It must never
//! panic; anything it accepts must re-encode and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_proto::frame::{decode, encode};
use meshgate_proto::{AgentMsg, CoordMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, _)) = decode::<AgentMsg>(data) {
        let again = encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode::<AgentMsg>(&again).expect("round trip").0, msg);
    }
    if let Ok((msg, _)) = decode::<CoordMsg>(data) {
        let again = encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode::<CoordMsg>(&again).expect("round trip").0, msg);
    }
});
