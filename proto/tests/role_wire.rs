//! `Role` is defined once, in `meshgate-common` (its discriminants are the eBPF map
//! representation), and travels in control messages by its declaration index. These
//! tests pin both encodings, so reordering the variants cannot silently break agents and
//! coordinators of different builds.

use meshgate_proto::{CoordMsg, Role, frame};

#[test]
fn roles_travel_as_their_historical_variant_index() {
    // Active, Standby, Fenced were variants 0, 1, 2 before the type moved to `common`.
    for (role, index) in [(Role::Active, 0u8), (Role::Standby, 1), (Role::Fenced, 2)] {
        let msg = CoordMsg::RoleChange {
            role,
            epoch: 9,
            active: None,
        };
        let bytes = frame::encode(&msg).expect("a small message encodes");
        let (back, used): (CoordMsg, usize) = frame::decode(&bytes).expect("it decodes");
        assert_eq!((back, used), (msg, bytes.len()));
        // After the length and version: the CoordMsg variant, then the role.
        let payload = &bytes[frame::HEADER_LEN + 1..];
        assert_eq!(payload[1], index, "{role:?} in {bytes:?}");
    }
}

#[test]
fn roles_and_map_values_agree() {
    for role in [Role::Active, Role::Standby, Role::Fenced] {
        assert_eq!(Role::from_u32(role as u32), role);
    }
    assert_eq!(Role::from_u32(0), Role::Fenced, "a fresh map is fenced");
    assert_eq!(
        Role::from_u32(77),
        Role::Fenced,
        "unknown values are the safe side"
    );
}
