//! `molar token`: create, list, revoke and rotate agent tokens.

use super::output::{format_time, print_json, table};
use super::{Cli, Failure, TokenCommand, api_err, client};
use crate::store::TokenScope;

/// `molar token ...`.
pub(super) async fn run(cli: &Cli, command: &TokenCommand) -> Result<(), Failure> {
    let c = client(cli)?;
    match command {
        TokenCommand::Create {
            name,
            server,
            set,
            enrol,
        } => {
            let scope = match (server, set, enrol) {
                (Some(id), _, _) => TokenScope::Server {
                    server_id: id.clone(),
                },
                (_, Some(label), _) => TokenScope::Set {
                    label: label.clone(),
                },
                (_, _, true) => TokenScope::Enrol,
                _ => TokenScope::Any,
            };
            let t = c
                .create_scoped_token(name, &scope)
                .await
                .map_err(api_err(false))?;
            print_created(&t, cli.json)?;
        }
        TokenCommand::Rotate { id } => {
            let t = c.rotate_token(id).await.map_err(api_err(false))?;
            print_created(&t, cli.json)?;
        }
        TokenCommand::List => {
            let ts = c.tokens().await.map_err(api_err(false))?;
            if cli.json {
                print_json(&ts)?;
            } else {
                let rows = ts
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.id,
                            t.name,
                            t.scope.describe(),
                            format_time(t.created_ms),
                            t.revoked_ms.map_or("-".into(), format_time),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "SCOPE", "CREATED", "REVOKED"], rows)?;
            }
        }
        TokenCommand::Revoke { id } => {
            c.revoke_token(id).await.map_err(api_err(false))?;
            if cli.json {
                print_json(&serde_json::json!({"id": id, "revoked": true}))?;
            } else {
                outln!("token {id} revoked")?;
            }
        }
    }
    Ok(())
}

/// The answer to `token create` and `token rotate`: the token alone (scripts capture it),
/// or everything as JSON.
fn print_created(t: &crate::api::CreatedToken, json: bool) -> Result<(), Failure> {
    if json {
        print_json(&serde_json::json!({
            "id": t.id,
            "name": t.name,
            "token": t.token.expose(),
            "scope": t.scope,
            "rotated_from": t.rotated_from,
        }))
    } else {
        outln!("{}", t.token.expose())
    }
}
