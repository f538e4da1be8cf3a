//! `molar bmc list|show|set|rotate`: seed 004's BMC table; passwords only with
//! `show --reveal`, which the controller writes to its audit log.

use super::output::{format_time, print_json};
use super::{BmcCommand, Cli, Failure, api_err, client};

/// `molar bmc list`, `show SERVER [--reveal]`, `set SERVER --user U --password-file F
/// [--no-verify]` and `rotate SERVER`.
pub(super) async fn run(cli: &Cli, command: &BmcCommand) -> Result<(), Failure> {
    let c = client(cli)?;
    let bmcs = match command {
        BmcCommand::List => c.bmcs().await.map_err(api_err(false))?,
        BmcCommand::Show { server, reveal } => {
            let b = c.bmc(server).await.map_err(api_err(false))?;
            if *reveal {
                let s = c.reveal_bmc(server).await.map_err(api_err(false))?;
                if cli.json {
                    return print_json(&serde_json::json!({"bmc": b, "credentials": s}));
                }
                super::output::table(&["SERVER", "USER", "PASSWORD", "PENDING"], {
                    let pending = s.pending_password.as_ref().map(|p| p.expose().to_owned());
                    vec![vec![
                        s.server_id.clone(),
                        s.username.clone(),
                        s.password.expose().to_owned(),
                        pending.unwrap_or_else(|| "-".into()),
                    ]]
                })?;
                return Ok(());
            }
            if cli.json {
                return print_json(&b);
            }
            vec![b]
        }
        BmcCommand::Set {
            server,
            user,
            password_file,
            no_verify,
        } => {
            let login = crate::bmc::BmcLogin {
                username: user.clone(),
                password: super::servers::read_password_file("--password-file", password_file)?,
                no_verify: *no_verify,
            };
            let r = c.set_bmc(server, &login).await.map_err(api_err(false))?;
            if cli.json {
                return print_json(&r);
            }
            println!("{}: BMC user {}: {}", r.server_id, r.username, r.message);
            return Ok(());
        }
        BmcCommand::Rotate { server } => {
            let r = c.rotate_bmc(server).await.map_err(api_err(false))?;
            if cli.json {
                return print_json(&r);
            }
            println!(
                "{}: BMC user {}: new password {}",
                r.server_id, r.username, r.message
            );
            return Ok(());
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
            let mut verified = match (&b.verify_error, b.verified_ms) {
                (Some(e), _) => format!("FAILING: {e}"),
                (None, Some(ms)) => format_time(ms),
                (None, None) => "never".into(),
            };
            if b.rotation_pending {
                verified.push_str(" (rotation unconfirmed)");
            }
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
