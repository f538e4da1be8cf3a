//! The server lifecycle of seed 003: its states, the transitions between them and why each
//! happens. This module owns the table; the store applies a transition only through
//! [`next`] (`store::lifecycle`), as a compare-and-set on the state it was taken from, so
//! nothing else decides or writes a server's state.
//!
//! ```text
//! [*] --> Initial                   enrolled (by its BMC, or an agent seen for the first time)
//! Initial --> Discovery             discover
//! Discovery --> Available           discovered
//! Available --> Reserved            claimed
//! Reserved --> Cleanup              released
//! Cleanup --> Available             cleaned
//! Available --> Maintenance         maintenance_on
//! Maintenance --> Available         maintenance_off
//! Available|Reserved|Discovery|Cleanup|Maintenance --> Error    failed
//! Error --> Maintenance             maintenance_on
//! Error --> Available               resolved
//! ```

use crate::store::ServerState;
use serde::{Deserialize, Serialize};

/// Why a server changes state: each cause has its edges in the diagram and no others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Discovery starts: the server is powered on into the ramdisk, or its agent connected.
    Discover,
    /// Discovery finished: inventory (and what the policy asks) stored.
    Discovered,
    /// A claim deployed the server.
    Claimed,
    /// The claim was released: cleaning starts.
    Released,
    /// Cleaning finished.
    Cleaned,
    MaintenanceOn,
    MaintenanceOff,
    /// A step failed; the transition's reason says which and why.
    Failed,
    /// The failure was dealt with (a retried step succeeded, or the operator said so).
    Resolved,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Discover,
        Cause::Discovered,
        Cause::Claimed,
        Cause::Released,
        Cause::Cleaned,
        Cause::MaintenanceOn,
        Cause::MaintenanceOff,
        Cause::Failed,
        Cause::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Discover => "discover",
            Cause::Discovered => "discovered",
            Cause::Claimed => "claimed",
            Cause::Released => "released",
            Cause::Cleaned => "cleaned",
            Cause::MaintenanceOn => "maintenance_on",
            Cause::MaintenanceOff => "maintenance_off",
            Cause::Failed => "failed",
            Cause::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every state, in the diagram's order.
pub const STATES: [ServerState; 7] = [
    ServerState::Initial,
    ServerState::Discovery,
    ServerState::Available,
    ServerState::Reserved,
    ServerState::Cleanup,
    ServerState::Maintenance,
    ServerState::Error,
];

/// A transition the table refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a server in state {from} cannot be {cause}: {}", expected(*cause))]
pub struct Illegal {
    pub from: ServerState,
    pub cause: Cause,
}

/// "it must be in ..." for an error message.
fn expected(cause: Cause) -> String {
    let from: Vec<&str> = STATES
        .into_iter()
        .filter(|s| next(*s, cause).is_ok())
        .map(ServerState::as_str)
        .collect();
    format!("only a server in state {} can", from.join(" or "))
}

/// The state `cause` takes a server in `from` to: the whole table.
pub fn next(from: ServerState, cause: Cause) -> Result<ServerState, Illegal> {
    use Cause as C;
    use ServerState as S;
    let to = match (from, cause) {
        (S::Initial, C::Discover) => S::Discovery,
        (S::Discovery, C::Discovered) => S::Available,
        (S::Available, C::Claimed) => S::Reserved,
        (S::Reserved, C::Released) => S::Cleanup,
        (S::Cleanup, C::Cleaned) => S::Available,
        (S::Available | S::Error, C::MaintenanceOn) => S::Maintenance,
        (S::Maintenance, C::MaintenanceOff) => S::Available,
        (S::Available | S::Reserved | S::Discovery | S::Cleanup | S::Maintenance, C::Failed) => {
            S::Error
        }
        (S::Error, C::Resolved) => S::Available,
        _ => return Err(Illegal { from, cause }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerState as S;

    /// Seed 003's diagram, edge by edge, as written there.
    const DIAGRAM: &[(S, S)] = &[
        (S::Initial, S::Discovery),
        (S::Discovery, S::Available),
        (S::Available, S::Reserved),
        (S::Reserved, S::Cleanup),
        (S::Cleanup, S::Available),
        (S::Available, S::Maintenance),
        (S::Maintenance, S::Available),
        (S::Available, S::Error),
        (S::Reserved, S::Error),
        (S::Discovery, S::Error),
        (S::Cleanup, S::Error),
        (S::Maintenance, S::Error),
        (S::Error, S::Maintenance),
        (S::Error, S::Available),
    ];

    #[test]
    fn the_table_has_exactly_the_diagrams_edges() {
        let mut edges = Vec::new();
        for from in STATES {
            for cause in Cause::ALL {
                if let Ok(to) = next(from, cause) {
                    assert!(
                        DIAGRAM.contains(&(from, to)),
                        "{from} --{cause}--> {to} is not in seed 003's diagram"
                    );
                    edges.push((from, to));
                }
            }
        }
        for e in DIAGRAM {
            assert!(edges.contains(e), "{} --> {} has no cause", e.0, e.1);
        }
        // One cause per edge: the history names why unambiguously.
        let mut sorted = edges.clone();
        sorted.sort_by_key(|(a, b)| (a.as_str(), b.as_str()));
        sorted.dedup();
        assert_eq!(sorted.len(), edges.len());
    }

    #[test]
    fn every_illegal_pair_is_refused_with_what_would_be_legal() {
        let mut refused = 0;
        for from in STATES {
            for cause in Cause::ALL {
                if let Err(e) = next(from, cause) {
                    refused += 1;
                    let msg = e.to_string();
                    assert!(
                        msg.contains(from.as_str()) && msg.contains(cause.as_str()),
                        "{msg}"
                    );
                }
            }
        }
        assert_eq!(refused, STATES.len() * Cause::ALL.len() - DIAGRAM.len());
        assert_eq!(
            next(S::Reserved, Cause::Claimed).unwrap_err().to_string(),
            "a server in state reserved cannot be claimed: only a server in state available can"
        );
        assert_eq!(
            next(S::Reserved, Cause::MaintenanceOn)
                .unwrap_err()
                .to_string(),
            "a server in state reserved cannot be maintenance_on: only a server in state \
             available or error can"
        );
    }

    #[test]
    fn causes_round_trip_their_names() {
        for c in Cause::ALL {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(Cause::parse("Claimed"), None);
    }
}
