//! `molar bmc list|show`: seed 004's BMC table, never with passwords.

use super::output::{format_time, print_json};
use super::{Cli, Failure, api_err, client};

/// `molar bmc list` and `molar bmc show SERVER`.
pub(super) async fn run(cli: &Cli, command: &super::BmcCommand) -> Result<(), Failure> {
    let c = client(cli)?;
    let bmcs = match command {
        super::BmcCommand::List => c.bmcs().await.map_err(api_err(false))?,
        super::BmcCommand::Show { server } => {
            let b = c.bmc(server).await.map_err(api_err(false))?;
            if cli.json {
                return print_json(&b);
            }
            vec![b]
        }
    };
    if cli.json {
        return print_json(&bmcs);
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = bmcs
        .into_iter()
        .map(|b| {
            let addr = match (&b.host, &b.ip) {
                (Some(h), _) => match b.port {
                    Some(p) => format!("{h}:{p}"),
                    None => h.clone(),
                },
                (None, Some(ip)) => ip.clone(),
                _ => "-".into(),
            };
            let verified = match (&b.verify_error, b.verified_ms) {
                (Some(e), _) => format!("FAILING: {e}"),
                (None, Some(ms)) => format_time(ms),
                (None, None) => "never".into(),
            };
            vec![
                b.server_id,
                b.protocol,
                addr,
                dash(b.mac),
                b.username,
                b.source,
                verified,
            ]
        })
        .collect();
    super::output::table(
        &[
            "SERVER", "PROTOCOL", "ADDRESS", "MAC", "USER", "SOURCE", "VERIFIED",
        ],
        rows,
    )
}
