//! The Redfish resources the controller reads (DMTF DSP0268 shapes), each only as far as
//! molar uses it. Every field is optional and unknown fields are ignored: BMCs differ.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `{"@odata.id": "/redfish/v1/..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct Link {
    #[serde(rename = "@odata.id")]
    pub id: String,
}

/// `/redfish/v1/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRoot {
    #[serde(default)]
    pub redfish_version: Option<String>,
    #[serde(default, rename = "UUID")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub systems: Option<Link>,
    #[serde(default)]
    pub managers: Option<Link>,
    #[serde(default)]
    pub session_service: Option<Link>,
    #[serde(default)]
    pub update_service: Option<Link>,
    #[serde(default)]
    pub links: Option<RootLinks>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootLinks {
    #[serde(default)]
    pub sessions: Option<Link>,
}

/// Any resource collection.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Collection {
    #[serde(default, rename = "Members")]
    pub members: Vec<Link>,
}

/// An action: its target and, when the service advertises them, the allowed values of its
/// parameters (`ResetType@Redfish.AllowableValues`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Action {
    pub target: String,
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

impl Action {
    /// The advertised values of `param`, `None` when the service does not say.
    pub fn allowable(&self, param: &str) -> Option<Vec<String>> {
        let v = self.rest.get(&format!("{param}@Redfish.AllowableValues"))?;
        Some(
            v.as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Actions {
    #[serde(default, rename = "#ComputerSystem.Reset")]
    pub system_reset: Option<Action>,
    #[serde(default, rename = "#Manager.Reset")]
    pub manager_reset: Option<Action>,
    #[serde(default, rename = "#VirtualMedia.InsertMedia")]
    pub insert_media: Option<Action>,
    #[serde(default, rename = "#VirtualMedia.EjectMedia")]
    pub eject_media: Option<Action>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Boot {
    #[serde(default)]
    pub boot_source_override_target: Option<String>,
    #[serde(default, rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
    pub allowable_targets: Option<Vec<String>>,
    #[serde(default)]
    pub boot_source_override_enabled: Option<String>,
    #[serde(default)]
    pub boot_source_override_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessorSummary {
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemorySummary {
    #[serde(default, rename = "TotalSystemMemoryGiB")]
    pub total_gib: Option<f64>,
}

/// A `ComputerSystem`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComputerSystem {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "UUID")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub power_state: Option<String>,
    #[serde(default)]
    pub indicator_led: Option<String>,
    #[serde(default)]
    pub location_indicator_active: Option<bool>,
    #[serde(default)]
    pub boot: Option<Boot>,
    #[serde(default)]
    pub processor_summary: Option<ProcessorSummary>,
    #[serde(default)]
    pub memory_summary: Option<MemorySummary>,
    #[serde(default)]
    pub processors: Option<Link>,
    #[serde(default)]
    pub memory: Option<Link>,
    #[serde(default)]
    pub ethernet_interfaces: Option<Link>,
    #[serde(default)]
    pub storage: Option<Link>,
    #[serde(default)]
    pub actions: Actions,
}

/// A `Manager` (the BMC itself).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Manager {
    #[serde(default)]
    pub firmware_version: Option<String>,
    #[serde(default)]
    pub ethernet_interfaces: Option<Link>,
    #[serde(default)]
    pub virtual_media: Option<Link>,
    #[serde(default)]
    pub actions: Actions,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EthernetInterface {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "MACAddress")]
    pub mac: Option<String>,
    #[serde(default, rename = "PermanentMACAddress")]
    pub permanent_mac: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Processor {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub total_cores: Option<u32>,
    #[serde(default)]
    pub total_threads: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Memory {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "CapacityMiB")]
    pub capacity_mib: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Storage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub drives: Vec<Link>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Drive {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateService {
    #[serde(default)]
    pub firmware_inventory: Option<Link>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SoftwareInventory {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualMedia {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub media_types: Vec<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub inserted: Option<bool>,
    #[serde(default)]
    pub actions: Actions,
}

/// A task (what a task monitor returns once done, or the Task resource).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(default)]
    pub task_state: Option<String>,
    #[serde(default)]
    pub task_status: Option<String>,
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// One `@Message.ExtendedInfo` / `Messages` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Message {
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
}

impl Message {
    /// `Base.1.8.PropertyValueNotInList: The value ... (resolution: ...)`, verbatim.
    pub fn line(&self) -> String {
        let mut s = match (&self.message_id, &self.message) {
            (Some(id), Some(m)) => format!("{id}: {m}"),
            (None, Some(m)) => m.clone(),
            (Some(id), None) => id.clone(),
            (None, None) => String::new(),
        };
        if let Some(r) = self.resolution.as_deref().filter(|r| !r.is_empty()) {
            s.push_str(&format!(" (resolution: {r})"));
        }
        s
    }
}

/// The body of a Redfish error response.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "@Message.ExtendedInfo")]
    pub extended: Vec<Message>,
}

/// What an error body says, for an operator: the ExtendedInfo messages verbatim, else the
/// error's own message, else `None`.
pub fn error_text(body: &[u8]) -> Option<String> {
    let e = serde_json::from_slice::<ErrorBody>(body).ok()?.error?;
    let lines: Vec<String> = e
        .extended
        .iter()
        .map(Message::line)
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.is_empty() {
        return Some(lines.join("; "));
    }
    e.message.or(e.code)
}
