//! `molar console SERVER [--force] [--log]` and `molar console-token SERVER [--ttl S | --revoke]`.

use super::{
    Cli, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OTHER, EXIT_UNAUTHORIZED, Failure, api_err, client,
};
use crate::console::attach::{AttachError, attach};
use std::io::Write;

pub(super) async fn run(cli: &Cli, id: &str, force: bool, log: bool) -> Result<(), Failure> {
    let c = client(cli)?;
    if log {
        let bytes = c.console_log(id).await.map_err(api_err(false))?;
        let mut out = std::io::stdout().lock();
        // The console's own bytes, as the terminal would have shown them.
        return match out.write_all(&bytes).and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::stdout_closed()),
            Err(e) => Err(Failure::new(EXIT_OTHER, format!("writing the log: {e}"))),
        };
    }
    attach(&c, id, force).await.map_err(|e| {
        let code = match &e {
            AttachError::Refused { code, .. } if code == "not_found" => EXIT_NOT_FOUND,
            AttachError::Refused { code, .. } if code == "unauthorized" => EXIT_UNAUTHORIZED,
            AttachError::Ended(_) => EXIT_FAILED,
            _ => EXIT_OTHER,
        };
        Failure::new(code, e.to_string())
    })
}

/// `molar console-token SERVER [--ttl S]` prints a console token (only this once) for a
/// viewer that is not the CLI; `--revoke` revokes every console token of the server.
pub(super) async fn token(
    cli: &Cli,
    id: &str,
    ttl_s: Option<u64>,
    revoke: bool,
) -> Result<(), Failure> {
    let c = client(cli)?;
    if revoke {
        let r = c.revoke_console_tokens(id).await.map_err(api_err(false))?;
        if cli.json {
            return super::output::print_json(&r);
        }
        return super::output::emit(&format!(
            "revoked {} console token(s) of {}",
            r.revoked,
            super::output::sanitize(&r.server_id)
        ));
    }
    let t = c
        .create_console_token(id, ttl_s)
        .await
        .map_err(api_err(false))?;
    if cli.json {
        return super::output::print_json(&t);
    }
    super::output::emit(t.token.expose())
}
