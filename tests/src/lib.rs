//! The veth/netns test harness.
