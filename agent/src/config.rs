//! `meshgate-agent run` settings: clap derive with `env = "MESHGATE_*"` on every flag, so
//! the systemd unit reads them from an environment file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use meshgate_proto::{SecretText, Token};

/// How the XDP program is attached to the LAN interface.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic mode, run by the kernel's network stack.
    Skb,
    /// No XDP: the kernel's routing tables alone carry the traffic.
    Off,
}

/// `meshgate-agent run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The enrolment token (node or device) from the coordinator's API.
    #[arg(
        long,
        env = "MESHGATE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<SecretText>,
    /// A file holding the token (preferred: keeps it out of `ps` and the environment).
    #[arg(long, env = "MESHGATE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Node only: the interface facing the advertised subnet.
    #[arg(long, env = "MESHGATE_LAN_IFACE")]
    pub lan_iface: Option<String>,
    /// Node only: the gateway address (VIP) the active replica owns on the LAN, with its
    /// prefix length, e.g. 192.168.50.1/24. It must lie inside a subnet of `--lan-iface`.
    #[arg(long, env = "MESHGATE_GATEWAY_IP")]
    pub gateway_ip: Option<Ipv4Net>,
    /// How the XDP program is attached to the LAN interface.
    #[arg(long, env = "MESHGATE_XDP_MODE", value_enum, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// Where the agent keeps its replica id and its status socket.
    #[arg(long, env = "MESHGATE_STATE_DIR", default_value = "/var/lib/meshgate")]
    pub state_dir: PathBuf,
    /// Name of the TUN device carrying mesh traffic.
    #[arg(long, env = "MESHGATE_TUN", default_value = "mesh0")]
    pub tun: String,
    /// How long a draining agent (SIGTERM) waits for a standby to take over.
    #[arg(long, env = "MESHGATE_DRAIN_TIMEOUT_MS", default_value_t = 5000)]
    pub drain_timeout_ms: u64,
    /// First wait after the coordinator refused this agent (unknown, revoked or deleted
    /// token, version mismatch); it doubles per refusal up to 5 minutes. The agent keeps
    /// retrying rather than exiting, so a coordinator fixed later finds it.
    #[arg(long, env = "MESHGATE_REFUSED_RETRY_MS", default_value_t = 30_000)]
    pub refused_retry_ms: u64,
    /// Node only: a host this replica must reach to be of use, `IP` (ICMP echo) or
    /// `IP:PORT` (TCP connect); repeatable. When none answers for `--health-fall`
    /// rounds, an active hands over and a standby is not eligible until they answer again.
    #[arg(
        long = "health-target",
        env = "MESHGATE_HEALTH_TARGET",
        value_delimiter = ','
    )]
    pub health_targets: Vec<crate::health::Target>,
    /// Time between health-check rounds.
    #[arg(long, env = "MESHGATE_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// How long one health check may take.
    #[arg(long, env = "MESHGATE_HEALTH_TIMEOUT_MS", default_value_t = 1000)]
    pub health_timeout_ms: u64,
    /// Rounds in a row without an answer that make this replica unhealthy.
    #[arg(long, env = "MESHGATE_HEALTH_FALL", default_value_t = 3)]
    pub health_fall: u32,
    /// Rounds in a row with an answer that make it healthy again.
    #[arg(long, env = "MESHGATE_HEALTH_RISE", default_value_t = 2)]
    pub health_rise: u32,
}

impl RunArgs {
    /// The health watch these settings ask for (idle without targets).
    pub fn health_watch(&self) -> crate::health::watch::HealthWatch {
        crate::health::watch::HealthWatch::start(
            self.health_targets.clone(),
            crate::health::Thresholds {
                fall: self.health_fall,
                rise: self.health_rise,
            },
            crate::health::watch::Schedule {
                interval: std::time::Duration::from_millis(self.health_interval_ms.max(1)),
                timeout: std::time::Duration::from_millis(self.health_timeout_ms.max(1)),
            },
        )
    }

    /// The token from `--token` or `--token-file`; an error names the token as the problem.
    pub fn token(&self) -> anyhow::Result<Token> {
        let text = match (&self.token, &self.token_file) {
            (Some(token), _) => token.expose().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("failed to read the token file {}", file.display()))?,
            (None, None) => {
                bail!("no token: pass --token TOKEN or --token-file FILE (or MESHGATE_TOKEN)")
            }
        };
        Token::decode(text.trim()).map_err(|e| anyhow::anyhow!("the token is malformed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let token = "c2VjcmV0LXRva2VuLXRleHQ";
        let cli = Cli::parse_from(["agent", "--token", token]);
        let shown = format!("{:?}", cli.run);
        assert!(!shown.contains(token), "{shown}");
        assert_eq!(cli.run.token.as_ref().map(SecretText::expose), Some(token));
    }
}
