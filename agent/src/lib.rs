//! The meshgate agent as a library: the binary is a thin CLI over these modules, and the
//! namespace tests drive them directly.

pub mod dataplane;
pub mod garp;
pub mod link_watch;
pub mod netlink;
pub mod sysctl;
pub mod tun;
