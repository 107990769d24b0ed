//! `meshgate-coordinator`: placeholder until the coordinator issue lands.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("meshgate-coordinator is not implemented yet")
}
