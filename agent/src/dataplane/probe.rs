//! The `xdp_count` probe: a program that loads, passes everything and counts. Tests and
//! benchmarks attach it where they need to count packets (or where a veth peer needs an
//! XDP program for native `XDP_TX` to deliver); the agent itself never loads it.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{XdpMode, xdp::XdpLinkId},
};
use meshgate_common::{PROBE_BYTES, PROBE_PACKETS, map, program};

use super::{
    DataplaneError, EBPF_OBJECT,
    program::{attach_xdp, xdp_program},
};

/// Packet and byte totals of the probe program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
}

/// The `xdp_count` probe program attached to one interface.
pub struct Probe {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
}

impl Probe {
    /// Loads the probe program and attaches it to `iface` in `mode`. The interface is looked
    /// up in the calling thread's network namespace.
    pub fn attach(iface: &str, mode: XdpMode) -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
        let name = program::XDP_COUNT;
        xdp_program(&mut ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link = attach_xdp(&mut ebpf, name, iface, mode)?;
        Ok(Self {
            ebpf,
            link: Some(link),
        })
    }

    /// Detaches the program; the maps stay readable.
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        let name = program::XDP_COUNT;
        if let Some(link) = self.link.take() {
            xdp_program(&mut self.ebpf, name)?
                .detach(link)
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
    }

    /// Reads the counters, summed over all CPUs.
    pub fn counters(&self) -> Result<ProbeCounters, DataplaneError> {
        let name = map::PROBE_COUNTERS;
        let map = self.ebpf.map(name).ok_or(DataplaneError::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let sum = |slot| -> Result<u64, DataplaneError> {
            let values = array
                .get(&slot, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
            Ok(values.iter().sum())
        };
        Ok(ProbeCounters {
            packets: sum(PROBE_PACKETS)?,
            bytes: sum(PROBE_BYTES)?,
        })
    }
}
