//! The XDP dataplane: the embedded eBPF object and the one typed handle through which user
//! space loads programs and touches their maps.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use meshgate_common::{PROBE_BYTES, PROBE_PACKETS, map, program};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESHGATE_EBPF_OBJECT_PATH"));

/// Errors of the dataplane handle.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF object could not be parsed or its maps could not be created.
    #[error("failed to load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or the verifier refused it (its log follows).
    #[error("failed to load XDP program `{name}`: {source}")]
    Program {
        /// The program's name in the object.
        name: &'static str,
        /// What aya reported, including the verifier log.
        source: aya::programs::ProgramError,
    },
    /// Attaching to the interface failed (unknown interface, or the mode is unsupported).
    #[error("failed to attach XDP program `{name}` to {iface} in {mode:?} mode: {source}")]
    Attach {
        /// The program's name in the object.
        name: &'static str,
        /// The interface.
        iface: String,
        /// The requested mode.
        mode: XdpMode,
        /// What aya reported.
        source: aya::programs::ProgramError,
    },
    /// A map is missing or has an unexpected type.
    #[error("eBPF map `{name}`: {source}")]
    Map {
        /// The map's name in the object.
        name: &'static str,
        /// What aya reported.
        source: aya::maps::MapError,
    },
}

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
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program {
                name,
                source: aya::programs::ProgramError::InvalidName { name: name.into() },
            })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let link = prog
            .attach(iface, mode)
            .map_err(|source| DataplaneError::Attach {
                name,
                iface: iface.into(),
                mode,
                source,
            })?;
        Ok(Self {
            ebpf,
            link: Some(link),
        })
    }

    /// Detaches the program; the maps stay readable.
    pub fn detach(&mut self) -> Result<(), DataplaneError> {
        let name = program::XDP_COUNT;
        if let Some(link) = self.link.take() {
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Program {
                    name,
                    source: aya::programs::ProgramError::InvalidName { name: name.into() },
                })?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.detach(link)
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
