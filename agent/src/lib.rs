//! The meshgate agent as a library: the binary is a thin CLI over these modules, and the
//! namespace tests drive them directly.

pub mod config;
pub mod dataplane;
pub mod failover;
pub mod garp;
pub mod health;
pub mod leftovers;
pub mod link_watch;
pub mod logship;
pub mod mss;
pub mod netlink;
pub mod policy;
pub mod policy_render;
pub mod policy_task;
pub mod runtime;
pub mod state_dir;
pub mod status;
pub mod sysctl;
pub mod sysdump;
pub mod tun;
pub mod vip;
