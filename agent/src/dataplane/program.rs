//! Finding a program of a loaded object by name and attaching it, with errors that name
//! the program, the interface and the mode.

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};

use super::DataplaneError;

/// The XDP program `name` of a loaded object.
pub(super) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: aya::programs::ProgramError::InvalidName { name: name.into() },
        })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Attaches the loaded program `name` to `iface` in `mode`, naming all three on failure.
pub(super) fn attach_xdp(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
) -> Result<XdpLinkId, DataplaneError> {
    xdp_program(ebpf, name)?
        .attach(iface, mode)
        .map_err(|source| DataplaneError::Attach {
            name,
            iface: iface.into(),
            mode,
            source,
        })
}
