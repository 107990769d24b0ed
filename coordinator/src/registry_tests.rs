//! Registry tests on a real redb store.

use super::*;
use crate::store::redb::RedbStore;

fn reg(dir: &std::path::Path) -> Registry {
    let store = Arc::new(RedbStore::open(&dir.join("store.redb")).unwrap());
    Registry::new(
        store,
        Ipam::new("100.96.0.0/12".parse().unwrap()).unwrap(),
        [9; 32],
    )
}

#[test]
fn nodes_tokens_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let r = reg(dir.path());
    let n = r.create_node("web", true).unwrap();
    assert!(matches!(
        r.create_node("web", false),
        Err(RegistryError::Conflict(_))
    ));
    assert!(matches!(
        r.create_node("bad name", false),
        Err(RegistryError::Invalid(_))
    ));
    let tok = r
        .token(Kind::Node, n.id, vec!["127.0.0.1:1".into()], [0; 32])
        .encode();
    assert!(matches!(r.authenticate(&tok), Ok((_, Participant::Node(x))) if x.id == n.id));
    let mut forged = Token::decode(&tok).unwrap();
    forged.secret[0] ^= 1;
    assert!(matches!(
        r.authenticate(&forged.encode()),
        Err(AuthError::Unknown)
    ));
    assert!(matches!(
        r.authenticate("garbage!"),
        Err(AuthError::Malformed(_))
    ));
    r.delete_node(n.id).unwrap();
    assert!(matches!(r.authenticate(&tok), Err(AuthError::Revoked)));
    let other = r
        .token(Kind::Device, Id::random(), vec!["h:1".into()], [0; 32])
        .encode();
    assert!(matches!(r.authenticate(&other), Err(AuthError::Unknown)));
}

#[test]
fn mesh_ips_are_stable_unique_and_freed() {
    let dir = tempfile::tempdir().unwrap();
    let r = reg(dir.path());
    let n = r.create_node("web", true).unwrap();
    let a = r.replica_ip(n.id, "ra").unwrap();
    let b = r.replica_ip(n.id, "rb").unwrap();
    let d = r.create_device("laptop").unwrap();
    assert_eq!(r.replica_ip(n.id, "ra").unwrap(), a);
    assert!(a != b && b != d.mesh_ip && a != d.mesh_ip);
    r.delete_node(n.id).unwrap();
    assert!(r.store().get(&format!("ipam/{a}")).unwrap().is_none());
    assert!(
        r.store()
            .get(&format!("ipam/{}", d.mesh_ip))
            .unwrap()
            .is_some()
    );
    drop(r);
    let r = reg(dir.path());
    assert_eq!(r.list_devices().unwrap()[0].mesh_ip, d.mesh_ip);
    let n2 = r.create_node("db", true).unwrap();
    let c = r.replica_ip(n2.id, "ra").unwrap();
    assert!(
        c != a && c != b && c != d.mesh_ip,
        "cursor moves on after a restart"
    );
}

#[test]
fn routes_are_validated_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let r = reg(dir.path());
    let a = r.create_node("a", true).unwrap();
    let b = r.create_node("b", true).unwrap();
    let v0 = r.routes_version().unwrap();
    let route = r.add_route(a.id, "192.168.50.0/24", "lan").unwrap();
    assert!(r.routes_version().unwrap() > v0);
    assert!(matches!(
        r.add_route(b.id, "192.168.0.0/16", ""),
        Err(RegistryError::Route(_))
    ));
    assert!(matches!(
        r.add_route(b.id, "100.96.1.0/24", ""),
        Err(RegistryError::Route(_))
    ));
    assert!(matches!(
        r.add_route(Id::random(), "10.0.0.0/8", ""),
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(r.all_routes().unwrap().len(), 1);
    r.delete_route(a.id, route.id).unwrap();
    assert!(r.add_route(b.id, "192.168.0.0/16", "").is_ok());
}

#[test]
fn epochs_of_many_nodes_persist_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let r = reg(dir.path());
    let (a, b) = (Id::random(), Id::random());
    let before = r.store.revision().unwrap();
    r.set_epochs(&[(a, 3), (b, 7)]).unwrap();
    assert_eq!(r.store.revision().unwrap(), before + 1, "one transaction");
    assert_eq!((r.epoch(a).unwrap(), r.epoch(b).unwrap()), (3, 7));
    r.set_epochs(&[]).unwrap();
    assert_eq!(r.store.revision().unwrap(), before + 1, "nothing to write");
    drop(r);
    let r = reg(dir.path());
    assert_eq!(r.epoch(b).unwrap(), 7, "survives a restart");
}
