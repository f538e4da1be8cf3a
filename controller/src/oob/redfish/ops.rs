//! The out-of-band operations over Redfish, in molar's vocabulary (`OobAction`): power by
//! `ComputerSystem.Reset` with the ResetTypes the system advertises, boot override, BMC
//! reset by `Manager.Reset`, identify, virtual media, and the out-of-band inventory.

use super::client::Client;
use super::types::{self, Collection, ComputerSystem, Manager};
use crate::oob::{BmcIdentity, BootTarget, OobAction, OobError, OobOutcome, PowerChange};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The Redfish ResetType for a molar power change. `cycle` is PowerCycle only: a BMC that
/// does not advertise it is refused rather than emulated with ForceOff then On.
pub fn reset_type(change: PowerChange) -> &'static str {
    match change {
        PowerChange::On => "On",
        PowerChange::Off => "ForceOff",
        PowerChange::Soft => "GracefulShutdown",
        PowerChange::Cycle => "PowerCycle",
        PowerChange::Reset => "ForceRestart",
    }
}

/// Refuses `value` when the service advertises its allowed values and `value` is not one.
pub fn check_allowed(
    addr: &str,
    what: &str,
    value: &str,
    allowed: Option<&[String]>,
) -> Result<(), OobError> {
    match allowed {
        Some(list) if !list.iter().any(|v| v == value) => Err(OobError::Refused {
            addr: addr.to_owned(),
            command: what.to_owned(),
            completion: format!(
                "{value} is not among the values this BMC advertises ({})",
                list.join(", ")
            ),
        }),
        _ => Ok(()),
    }
}

/// The Redfish BootSourceOverrideTarget for a molar boot device.
pub fn boot_source(target: BootTarget) -> &'static str {
    match target {
        BootTarget::None => "None",
        BootTarget::Pxe => "Pxe",
        BootTarget::Disk => "Hdd",
        BootTarget::Bios => "BiosSetup",
        BootTarget::Cdrom => "Cd",
    }
}

async fn first_member(c: &mut Client, collection: &str, what: &str) -> Result<String, OobError> {
    let col: Collection = c.get(collection).await?;
    col.members
        .into_iter()
        .next()
        .map(|l| l.id)
        .ok_or_else(|| OobError::Protocol {
            addr: c.addr().to_owned(),
            detail: format!("{collection} lists no {what}"),
        })
}

/// The first system's path (a BMC manages one server here).
pub async fn system_path(c: &mut Client) -> Result<String, OobError> {
    let root = c.service_root().await?;
    let col = root
        .systems
        .map(|l| l.id)
        .unwrap_or_else(|| "/redfish/v1/Systems".into());
    first_member(c, &col, "system").await
}

async fn manager_path(c: &mut Client) -> Result<String, OobError> {
    let root = c.service_root().await?;
    let col = root
        .managers
        .map(|l| l.id)
        .unwrap_or_else(|| "/redfish/v1/Managers".into());
    first_member(c, &col, "manager").await
}

fn power_on(state: Option<&str>) -> Option<bool> {
    match state? {
        "On" | "PoweringOff" | "Paused" => Some(true),
        "Off" | "PoweringOn" => Some(false),
        _ => None,
    }
}

/// Runs one action on a logged-in client.
pub async fn run(c: &mut Client, action: &OobAction) -> Result<OobOutcome, OobError> {
    let addr = c.addr().to_owned();
    match action {
        OobAction::PowerStatus => {
            let path = system_path(c).await?;
            let sys: ComputerSystem = c.get(&path).await?;
            let on = power_on(sys.power_state.as_deref());
            Ok(OobOutcome {
                message: format!(
                    "server power state: {}",
                    sys.power_state
                        .as_deref()
                        .unwrap_or("unknown")
                        .to_lowercase()
                ),
                power_on: on,
            })
        }
        OobAction::Power(change) => {
            let path = system_path(c).await?;
            let sys: ComputerSystem = c.get(&path).await?;
            let reset = sys.actions.system_reset.ok_or_else(|| OobError::Refused {
                addr: addr.clone(),
                command: "power".into(),
                completion: "the system has no ComputerSystem.Reset action".into(),
            })?;
            let rt = reset_type(*change);
            check_allowed(
                &addr,
                "ComputerSystem.Reset",
                rt,
                reset.allowable("ResetType").as_deref(),
            )?;
            c.post(
                &reset.target,
                &json!({ "ResetType": rt }),
                "ComputerSystem.Reset",
            )
            .await?;
            let after: ComputerSystem = c.get(&path).await?;
            Ok(OobOutcome {
                message: format!(
                    "server power state set successful: {} (ResetType {rt})",
                    serde_json::to_value(change)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                power_on: power_on(after.power_state.as_deref()),
            })
        }
        OobAction::BootDevice {
            device,
            persistent,
            efi,
        } => {
            let path = system_path(c).await?;
            let sys: ComputerSystem = c.get(&path).await?;
            let target = boot_source(*device);
            let boot = if *device == BootTarget::None {
                json!({ "Boot": { "BootSourceOverrideEnabled": "Disabled" } })
            } else {
                check_allowed(
                    &addr,
                    "boot override",
                    target,
                    sys.boot
                        .as_ref()
                        .and_then(|b| b.allowable_targets.as_deref()),
                )?;
                json!({ "Boot": {
                    "BootSourceOverrideTarget": target,
                    "BootSourceOverrideEnabled": if *persistent { "Continuous" } else { "Once" },
                    "BootSourceOverrideMode": if *efi { "UEFI" } else { "Legacy" },
                }})
            };
            c.patch(&path, &boot, "boot override").await?;
            Ok(OobOutcome {
                message: format!(
                    "boot device set: {target} ({}, {})",
                    if *persistent { "continuous" } else { "once" },
                    if *efi { "UEFI" } else { "Legacy" }
                ),
                power_on: None,
            })
        }
        OobAction::BmcReset => {
            let path = manager_path(c).await?;
            let m: Manager = c.get(&path).await?;
            let reset = m.actions.manager_reset.ok_or_else(|| OobError::Refused {
                addr: addr.clone(),
                command: "BMC reset".into(),
                completion: "the manager has no Manager.Reset action".into(),
            })?;
            let allowed = reset.allowable("ResetType");
            let rt = match &allowed {
                Some(l) if !l.iter().any(|v| v == "GracefulRestart") => "ForceRestart",
                _ => "GracefulRestart",
            };
            check_allowed(&addr, "Manager.Reset", rt, allowed.as_deref())?;
            c.post(&reset.target, &json!({ "ResetType": rt }), "Manager.Reset")
                .await?;
            Ok(OobOutcome {
                message: format!("BMC reset requested (ResetType {rt})"),
                power_on: None,
            })
        }
        OobAction::Identify { seconds } => {
            let path = system_path(c).await?;
            let sys: ComputerSystem = c.get(&path).await?;
            let on = *seconds != Some(0);
            let body = if sys.location_indicator_active.is_some() {
                json!({ "LocationIndicatorActive": on })
            } else if sys.indicator_led.is_some() {
                json!({ "IndicatorLED": if on { "Blinking" } else { "Off" } })
            } else {
                return Err(OobError::Refused {
                    addr,
                    command: "identify".into(),
                    completion: "the system has neither LocationIndicatorActive nor IndicatorLED"
                        .into(),
                });
            };
            c.patch(&path, &body, "identify").await?;
            Ok(OobOutcome {
                message: format!(
                    "chassis identify {}{}",
                    if on { "on" } else { "off" },
                    if on && seconds.is_some() {
                        " (Redfish has no timed identify: it stays on until turned off)"
                    } else {
                        ""
                    }
                ),
                power_on: None,
            })
        }
        OobAction::BootFromMedia { url } => {
            insert_media(c, url).await?;
            let boot = OobAction::BootDevice {
                device: BootTarget::Cdrom,
                persistent: false,
                efi: true,
            };
            let r = Box::pin(run(c, &boot)).await?;
            Ok(OobOutcome {
                message: format!("virtual media inserted: {url}; {}", r.message),
                power_on: None,
            })
        }
        OobAction::EjectMedia => {
            eject_media(c).await?;
            Ok(OobOutcome {
                message: "virtual media ejected".into(),
                power_on: None,
            })
        }
    }
}

/// The manager's virtual media devices that take a CD/DVD image.
async fn cd_media(c: &mut Client) -> Result<(String, types::VirtualMedia), OobError> {
    let path = manager_path(c).await?;
    let m: Manager = c.get(&path).await?;
    let col = m.virtual_media.ok_or_else(|| OobError::Refused {
        addr: c.addr().to_owned(),
        command: "virtual media".into(),
        completion: "the manager has no VirtualMedia".into(),
    })?;
    let col: Collection = c.get(&col.id).await?;
    for l in col.members {
        let vm: types::VirtualMedia = c.get(&l.id).await?;
        if vm.media_types.iter().any(|t| t == "CD" || t == "DVD") {
            return Ok((l.id, vm));
        }
    }
    Err(OobError::Refused {
        addr: c.addr().to_owned(),
        command: "virtual media".into(),
        completion: "no virtual media device takes CD or DVD images".into(),
    })
}

/// Inserts `url` into the CD virtual media (ejecting what is there first).
pub async fn insert_media(c: &mut Client, url: &str) -> Result<String, OobError> {
    let (path, vm) = cd_media(c).await?;
    if vm.inserted == Some(true) {
        eject(c, &path, &vm).await?;
    }
    let body = json!({ "Image": url, "Inserted": true, "WriteProtected": true });
    match &vm.actions.insert_media {
        Some(a) => {
            let target = a.target.clone();
            c.post(&target, &body, "VirtualMedia.InsertMedia").await?;
        }
        None => c.patch(&path, &body, "VirtualMedia insert").await?,
    }
    Ok(path)
}

async fn eject(c: &mut Client, path: &str, vm: &types::VirtualMedia) -> Result<(), OobError> {
    match &vm.actions.eject_media {
        Some(a) => {
            let target = a.target.clone();
            c.post(&target, &json!({}), "VirtualMedia.EjectMedia")
                .await
                .map(|_| ())
        }
        None => {
            c.patch(
                path,
                &json!({ "Image": null, "Inserted": false }),
                "VirtualMedia eject",
            )
            .await
        }
    }
}

/// Ejects whatever the CD virtual media holds.
pub async fn eject_media(c: &mut Client) -> Result<(), OobError> {
    let (path, vm) = cd_media(c).await?;
    if vm.inserted == Some(true) || vm.image.is_some() {
        eject(c, &path, &vm).await?;
    }
    Ok(())
}

/// Hardware details read through the BMC before (or without) any agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OobInventory {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    #[serde(default)]
    pub processors: Vec<OobProcessor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Host NIC MACs (the system's EthernetInterfaces), lowercase.
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub drives: Vec<OobDrive>,
    #[serde(default)]
    pub firmware: Vec<OobFirmware>,
    /// Sections the BMC refused to tell (its own words), left empty above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OobProcessor {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OobDrive {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OobFirmware {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Lowercase `aa:bb:..` from a Redfish MAC, `None` when it is not one.
pub fn normalise_mac(mac: &str) -> Option<String> {
    let m = mac.trim().to_ascii_lowercase().replace('-', ":");
    let ok = m.len() == 17
        && m.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    (ok && m != "00:00:00:00:00:00").then_some(m)
}

async fn members(c: &mut Client, link: Option<&types::Link>) -> Result<Vec<String>, OobError> {
    let Some(l) = link else {
        return Ok(Vec::new());
    };
    let col: Collection = c.get(&l.id).await?;
    Ok(col.members.into_iter().map(|m| m.id).collect())
}

/// Reads the out-of-band inventory. Sub-resources a BMC lacks are left empty.
pub async fn inventory(c: &mut Client) -> Result<OobInventory, OobError> {
    let path = system_path(c).await?;
    let sys: ComputerSystem = c.get(&path).await?;
    let mut inv = OobInventory {
        source: "redfish".into(),
        system_uuid: sys.uuid.as_deref().map(str::to_ascii_lowercase),
        manufacturer: sys.manufacturer.clone(),
        model: sys.model.clone(),
        serial: sys.serial_number.clone(),
        power_state: sys.power_state.clone(),
        memory_mib: sys
            .memory_summary
            .as_ref()
            .and_then(|m| m.total_gib)
            .map(|g| (g * 1024.0).round() as u64),
        ..Default::default()
    };
    let mut missing = Vec::new();
    // A section the BMC refuses (404, 403, 500 on a sub-resource) is left empty and noted;
    // losing the connection or the login still fails the whole read.
    macro_rules! section {
        ($name:literal, $e:expr) => {
            match $e {
                Ok(()) => {}
                Err(OobError::Refused { completion, .. }) => {
                    missing.push(format!("{}: {completion}", $name))
                }
                Err(e) => return Err(e),
            }
        };
    }
    section!("processors", processors(c, &sys, &mut inv).await);
    section!("memory", memory(c, &sys, &mut inv).await);
    section!("ethernet interfaces", nics(c, &sys, &mut inv).await);
    section!("storage", storage(c, &sys, &mut inv).await);
    section!("firmware inventory", firmware(c, &mut inv).await);
    inv.missing = missing;
    Ok(inv)
}

async fn processors(
    c: &mut Client,
    sys: &ComputerSystem,
    inv: &mut OobInventory,
) -> Result<(), OobError> {
    for p in members(c, sys.processors.as_ref()).await? {
        let pr: types::Processor = c.get(&p).await?;
        inv.processors.push(OobProcessor {
            id: pr.id.unwrap_or(p),
            model: pr.model,
            cores: pr.total_cores,
            threads: pr.total_threads,
        });
    }
    Ok(())
}

async fn memory(
    c: &mut Client,
    sys: &ComputerSystem,
    inv: &mut OobInventory,
) -> Result<(), OobError> {
    let mut dimm_mib = 0u64;
    for m in members(c, sys.memory.as_ref()).await? {
        let d: types::Memory = c.get(&m).await?;
        dimm_mib += d.capacity_mib.unwrap_or(0);
    }
    if inv.memory_mib.is_none() && dimm_mib > 0 {
        inv.memory_mib = Some(dimm_mib);
    }
    Ok(())
}

async fn nics(
    c: &mut Client,
    sys: &ComputerSystem,
    inv: &mut OobInventory,
) -> Result<(), OobError> {
    for e in members(c, sys.ethernet_interfaces.as_ref()).await? {
        let nic: types::EthernetInterface = c.get(&e).await?;
        if let Some(m) = nic
            .permanent_mac
            .as_deref()
            .or(nic.mac.as_deref())
            .and_then(normalise_mac)
            && !inv.macs.contains(&m)
        {
            inv.macs.push(m);
        }
    }
    Ok(())
}

async fn storage(
    c: &mut Client,
    sys: &ComputerSystem,
    inv: &mut OobInventory,
) -> Result<(), OobError> {
    for s in members(c, sys.storage.as_ref()).await? {
        let st: types::Storage = c.get(&s).await?;
        for d in st.drives {
            let dr: types::Drive = c.get(&d.id).await?;
            inv.drives.push(OobDrive {
                id: dr.id.unwrap_or(d.id),
                model: dr.model,
                serial: dr.serial_number,
                capacity_bytes: dr.capacity_bytes,
            });
        }
    }
    Ok(())
}

async fn firmware(c: &mut Client, inv: &mut OobInventory) -> Result<(), OobError> {
    let root = c.service_root().await?;
    let Some(us) = root.update_service else {
        return Ok(());
    };
    let us: types::UpdateService = c.get(&us.id).await?;
    for f in members(c, us.firmware_inventory.as_ref()).await? {
        let sw: types::SoftwareInventory = c.get(&f).await?;
        inv.firmware.push(OobFirmware {
            name: sw.name.or(sw.id).unwrap_or(f),
            version: sw.version,
        });
    }
    Ok(())
}

/// Who the BMC is: the system UUID (matched against an agent's later system GUID), the
/// manager's firmware and its MAC.
pub async fn identify_bmc(c: &mut Client) -> Result<BmcIdentity, OobError> {
    let path = system_path(c).await?;
    let sys: ComputerSystem = c.get(&path).await?;
    let mpath = manager_path(c).await?;
    let m: Manager = c.get(&mpath).await?;
    let mut mac = None;
    for e in members(c, m.ethernet_interfaces.as_ref()).await? {
        let nic: types::EthernetInterface = c.get(&e).await?;
        if let Some(x) = nic
            .permanent_mac
            .as_deref()
            .or(nic.mac.as_deref())
            .and_then(normalise_mac)
        {
            mac = Some(x);
            break;
        }
    }
    Ok(BmcIdentity {
        cipher_suite: None,
        system_guid: sys.uuid.map(|u| u.to_ascii_lowercase()),
        firmware_version: m.firmware_version,
        mac,
    })
}
