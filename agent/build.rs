//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so the installed agent is one
//! self-contained binary. The object is built by nightly for another target, which a
//! build script cannot do cleanly, so a missing object is one clear error instead.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MESHGATE_EBPF_OBJECT");
    let object = match std::env::var_os("MESHGATE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
            );
            manifest.join("../ebpf/target/bpfel-unknown-none/release/meshgate-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first (or `cargo xtask setup` on a fresh machine)",
            object.display()
        );
    }
    let object = object
        .canonicalize()
        .expect("the object exists, checked above");
    println!(
        "cargo:rustc-env=MESHGATE_EBPF_OBJECT_PATH={}",
        object.display()
    );
}
