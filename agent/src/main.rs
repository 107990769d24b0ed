//! `meshgate-agent`: placeholder CLI until the agent issue lands.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("meshgate-agent is not implemented yet")
}
