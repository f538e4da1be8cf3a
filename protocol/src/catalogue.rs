//! The method catalogue: every protocol method, declared once with its name, its direction,
//! whether it is a plain call or a task, and its params and result types.
//!
//! The agent registers its handlers and the controller makes its calls through these types
//! ([`Method`], [`TaskMethod`]), so a method name is written exactly once, here. Names from
//! the wire are resolved with [`lookup`], which also knows the aliases (the seed spells the
//! standby methods `standbye.*`; `standby.*` is accepted too).
//!
//! Params of every method that changes the machine deny unknown fields (an ignored `exclude`
//! would erase the wrong disk); results tolerate them, so a peer one release newer is
//! understood.

use crate::bmc::{
    BmcInfo, BmcResetParams, BmcResetResult, BootDeviceParams, BootDeviceResult,
    ChassisPowerParams, ChassisPowerResult, SetCredentialsParams, SetCredentialsResult,
};
use crate::erase::{DiskEraseParams, DiskEraseResult};
use crate::firmware::{FirmwareParams, FirmwareResult};
use crate::image::{CacheImagesParams, CacheImagesResult, PrepareImageParams, PrepareImageResult};
use crate::inventory::Inventory;
use crate::methods::{
    Ack, Empty, HandshakeParams, HandshakeResult, LogParams, PowerResult, StatusResult,
    TaskAccepted, TaskInfo, TaskListResult, TaskRef, TaskStatus,
};
use crate::qc::{QcParams, QcReport};
use crate::run_image::{RunImageParams, RunImageResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Who sends a method's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The controller commands, the agent answers.
    ToAgent,
    /// The agent commands, the controller answers.
    ToController,
    /// Either side (`ping`).
    Both,
}

/// How a method is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered with its result.
    Call,
    /// Answered at once with [`TaskAccepted`]; progress and the outcome follow as
    /// `task_status` commands. The command's params carry a controller-chosen `task_id`.
    Task,
}

/// A protocol method with its name and typed params and result.
pub trait Method {
    const NAME: &'static str;
    const DIRECTION: Direction;
    const KIND: Kind;
    type Params: Serialize + DeserializeOwned + Send + 'static;
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

/// A task method: answered with [`TaskAccepted`]; `Output` is what its `complete` status
/// carries as `result`. `Params` are the params without the `task_id`, which the agent's task
/// engine takes off before they are decoded.
pub trait TaskMethod: Method<Result = TaskAccepted> {
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

/// The params of a task command on the wire: the task's own params plus its `task_id`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCommand<'a, P: Serialize> {
    pub task_id: &'a str,
    #[serde(flatten)]
    pub params: &'a P,
}

/// Params of a method whose shape the issue that implements it defines; until then the agent
/// answers `unknown_method` and the controller forwards the object as given.
pub type Unspecified = Map<String, Value>;

/// One catalogue entry, for code that handles names from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    pub name: &'static str,
    pub direction: Direction,
    pub kind: Kind,
    /// Whether the method changes the machine (disks, power, BMC credentials, firmware):
    /// its params are checked strictly and the agent's authority policy decides.
    pub destructive: bool,
}

macro_rules! catalogue {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal, $dir:ident, $kind:ident, destructive: $destructive:literal,
        $params:ty => $result:ty $(, output: $output:ty)?;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;
            impl Method for $ty {
                const NAME: &'static str = $name;
                const DIRECTION: Direction = Direction::$dir;
                const KIND: Kind = Kind::$kind;
                type Params = $params;
                type Result = $result;
            }
            $(impl TaskMethod for $ty {
                type Output = $output;
            })?
        )*

        /// Every method, in the order DESIGN.md lists them.
        pub const CATALOGUE: &[MethodInfo] = &[$(
            MethodInfo {
                name: $name,
                direction: Direction::$dir,
                kind: Kind::$kind,
                destructive: $destructive,
            },
        )*];
    };
}

catalogue! {
    /// agent → controller, first command of every connection.
    Handshake = "handshake", ToController, Call, destructive: false,
        HandshakeParams => HandshakeResult;
    /// Either direction; the params are echoed back as the result.
    Ping = "ping", Both, Call, destructive: false,
        Map<String, Value> => Map<String, Value>;
    /// agent → controller: a batch of structured log records.
    Log = "log", ToController, Call, destructive: false,
        LogParams => Ack;
    /// agent → controller: progress or outcome of a task.
    TaskStatusUpdate = "task_status", ToController, Call, destructive: false,
        TaskStatus => Ack;

    /// What the agent is doing: version, uptime, tasks, modules, memory.
    Status = "status", ToAgent, Call, destructive: false,
        Empty => StatusResult;
    TaskList = "task.list", ToAgent, Call, destructive: false,
        Empty => TaskListResult;
    TaskCancel = "task.cancel", ToAgent, Call, destructive: false,
        TaskRef => TaskInfo;
    /// The whole hardware inventory.
    InventoryGet = "inventory", ToAgent, Call, destructive: false,
        Empty => Inventory;

    /// The local BMC: identity, LAN channels, users.
    BmcInfoGet = "bmc.info", ToAgent, Call, destructive: false,
        Empty => BmcInfo;
    /// Create or update a BMC user; the result carries the password, for the controller only.
    BmcSetCredentials = "bmc.set_credentials", ToAgent, Call, destructive: true,
        SetCredentialsParams => SetCredentialsResult;
    /// Cold or warm BMC reset, answered with the BMC's own completion code.
    BmcReset = "bmc.reset", ToAgent, Call, destructive: true,
        BmcResetParams => BmcResetResult;
    /// Chassis power through the local BMC, answered before it happens.
    ChassisPower = "chassis.power", ToAgent, Call, destructive: true,
        ChassisPowerParams => ChassisPowerResult;
    /// The next boot device (boot flags) through the local BMC.
    ChassisBootDevice = "chassis.boot_device", ToAgent, Call, destructive: true,
        BootDeviceParams => BootDeviceResult;
    /// reboot(2), answered before it happens.
    Reboot = "reboot", ToAgent, Call, destructive: true,
        Empty => PowerResult;
    /// Power off through reboot(2), answered before it happens.
    Poweroff = "poweroff", ToAgent, Call, destructive: true,
        Empty => PowerResult;

    /// Erase disks (every disk unless named).
    DiskErase = "decom.disk_erase", ToAgent, Task, destructive: true,
        DiskEraseParams => TaskAccepted, output: DiskEraseResult;
    /// Firmware and BIOS to known-good versions and settings.
    FirmwareSecure = "decom.firmware_secure", ToAgent, Task, destructive: true,
        FirmwareParams => TaskAccepted, output: FirmwareResult;
    /// Check the hardware against its chassis model's spec.
    Qc = "decom.qc", ToAgent, Task, destructive: false,
        QcParams => TaskAccepted, output: QcReport;
    /// Cache images on local storage in priority order.
    CacheImages = "standbye.cache_images", ToAgent, Task, destructive: true,
        CacheImagesParams => TaskAccepted, output: CacheImagesResult;
    /// Write an image to a disk.
    PrepareImage = "standbye.prepare_image", ToAgent, Task, destructive: true,
        PrepareImageParams => TaskAccepted, output: PrepareImageResult;
    /// Config drive, boot setup, then kexec or reboot into the written image.
    RunImage = "standbye.run_image", ToAgent, Task, destructive: true,
        RunImageParams => TaskAccepted, output: RunImageResult;
}

/// Alternative spellings of method names: the seed's `standbye.` prefix is canonical, the
/// dictionary's `standby.` is accepted.
const ALIASES: &[(&str, &str)] = &[("standby.", "standbye.")];

/// The canonical spelling of a method name (`standby.run_image` → `standbye.run_image`);
/// names without an alias come back unchanged, known or not.
pub fn canonical_method(method: &str) -> std::borrow::Cow<'_, str> {
    for (alias, canonical) in ALIASES {
        if let Some(rest) = method.strip_prefix(alias) {
            return format!("{canonical}{rest}").into();
        }
    }
    method.into()
}

/// The catalogue entry of a method name from the wire, aliases resolved.
pub fn lookup(method: &str) -> Option<&'static MethodInfo> {
    let name = canonical_method(method);
    CATALOGUE.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<M: Method>() -> MethodInfo {
        MethodInfo {
            name: M::NAME,
            direction: M::DIRECTION,
            kind: M::KIND,
            destructive: lookup(M::NAME).is_some_and(|m| m.destructive),
        }
    }

    #[test]
    fn every_type_is_its_catalogue_entry() {
        let typed = [
            entry::<Handshake>(),
            entry::<Ping>(),
            entry::<Log>(),
            entry::<TaskStatusUpdate>(),
            entry::<Status>(),
            entry::<TaskList>(),
            entry::<TaskCancel>(),
            entry::<InventoryGet>(),
            entry::<BmcInfoGet>(),
            entry::<BmcSetCredentials>(),
            entry::<BmcReset>(),
            entry::<ChassisPower>(),
            entry::<ChassisBootDevice>(),
            entry::<Reboot>(),
            entry::<Poweroff>(),
            entry::<DiskErase>(),
            entry::<FirmwareSecure>(),
            entry::<Qc>(),
            entry::<CacheImages>(),
            entry::<PrepareImage>(),
            entry::<RunImage>(),
        ];
        assert_eq!(typed.as_slice(), CATALOGUE);
        let mut names: Vec<_> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "a name is declared twice");
    }

    #[test]
    fn aliases_resolve_to_the_canonical_name() {
        assert_eq!(canonical_method("standby.run_image"), "standbye.run_image");
        assert_eq!(canonical_method("standbye.run_image"), "standbye.run_image");
        assert_eq!(canonical_method("bmc.info"), "bmc.info");
        assert_eq!(
            lookup("standby.prepare_image").unwrap().name,
            PrepareImage::NAME
        );
        assert_eq!(lookup("decom.disk_erase").unwrap().kind, Kind::Task);
        assert!(lookup("decom.disk_erase").unwrap().destructive);
        assert!(lookup("no.such").is_none());
        assert!(lookup("").is_none());
    }

    /// Adds a field this release does not know to every object in `v`, nested ones too.
    fn from_a_newer_peer(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.values_mut().for_each(from_a_newer_peer);
                o.insert("added_in_v1_9".into(), serde_json::json!({"x": [1, 2]}));
            }
            Value::Array(a) => a.iter_mut().for_each(from_a_newer_peer),
            _ => {}
        }
    }

    /// Decodes `sample` as `T` after a newer peer added fields everywhere in it.
    fn tolerated<T: DeserializeOwned>(what: &str, sample: Value) {
        let mut v = sample;
        from_a_newer_peer(&mut v);
        if let Err(e) = serde_json::from_value::<T>(v) {
            panic!("{what} from a newer peer was refused: {e}");
        }
    }

    fn result_of<M: Method>(sample: Value) {
        tolerated::<M::Result>(M::NAME, sample);
    }

    /// A controller one release newer adds a field to the handshake result (or any other
    /// result): the agent must still connect; likewise the controller with a newer agent's
    /// results, statuses, logs and handshake.
    #[test]
    fn results_and_reports_from_a_newer_peer_are_understood() {
        use serde_json::json;
        let task_info = json!({"task_id": "t", "method": "decom.disk_erase", "state": "running",
            "percent": 1.5, "eta": null, "msg": "m", "code": "c", "result": {"a": 1},
            "started_at_ms": 1, "finished_at_ms": 2, "cancel_requested": false});
        result_of::<Handshake>(
            json!({"server_id": "srv-1", "protocol": "v1", "acknowledged_tasks": ["t"]}),
        );
        result_of::<Log>(json!({}));
        result_of::<TaskStatusUpdate>(json!({}));
        result_of::<Status>(
            json!({"agent_version": "0.1.0", "uptime_s": 1, "boot_id": "b",
            "ramdisk": true, "tasks": [task_info], "logs_dropped": 0,
            "modules": {"loaded": ["nvme"], "failed": [["x", "why"]], "unmatched_aliases": 1},
            "rss_bytes": 1}),
        );
        result_of::<TaskList>(json!({"tasks": [task_info]}));
        result_of::<TaskCancel>(task_info.clone());
        // `molar-agent inventory --root agent/tests/fixtures/inventory/qemu-q35`, a QEMU server.
        result_of::<InventoryGet>(
            serde_json::from_str(include_str!("../tests/data/inventory-qemu-q35.json"))
                .expect("inventory sample"),
        );
        let channel = json!({"channel": 1, "mac": "52:54:00:be:ef:01", "ip": "192.0.2.10",
            "ip_source": "static", "netmask": "255.255.255.0", "gateway": "192.0.2.1",
            "vlan": 7, "privilege": "administrator", "ipmi_messaging": true, "link_auth": true,
            "callback_only": false});
        let access = json!({"channel": 1, "privilege": "user", "ipmi_messaging": true,
            "link_auth": false, "callback_only": false});
        result_of::<BmcInfoGet>(json!({"device_id": 32, "device_revision": 1,
            "firmware_version": "9.08", "ipmi_version": "2.0", "manufacturer_id": 4753,
            "product_id": 3842, "max_users": 10, "lan_channels": [channel],
            "users": [{"id": 2, "name": "molar", "enabled": true, "channels": [access]}],
            "notes": ["n"]}));
        result_of::<BmcSetCredentials>(json!({"user_id": 3, "username": "molar",
            "password": "pw", "privilege": "administrator", "channels": [1],
            "sol_enabled": true, "password_verified": true, "notes": ["n"]}));
        result_of::<BmcReset>(json!({"kind": "cold"}));
        result_of::<ChassisPower>(json!({"action": "off", "status": {"power_on": true,
            "power_overload": false, "power_interlock": false, "power_fault": false,
            "power_control_fault": false, "restore_policy": "previous", "intrusion": false,
            "drive_fault": false, "cooling_fault": false}}));
        result_of::<ChassisBootDevice>(json!({"device": "pxe", "persistent": false, "efi": true}));
        result_of::<Reboot>(json!({"action": "reboot"}));
        result_of::<Poweroff>(json!({"action": "poweroff"}));
        result_of::<DiskErase>(json!({"task_id": "t", "state": "running"}));
        tolerated::<<DiskErase as TaskMethod>::Output>(
            "decom.disk_erase output",
            json!({"devices": [{"device": "/dev/nvme0n1", "model": "QEMU", "serial": "S",
                "outcome": "erased", "method": "nvme_format_user_data", "size_bytes": 1,
                "bytes_done": 1, "seconds": 0.5, "throughput": 2.0,
                "verification": {"passed": true, "blocks_checked": 1, "bytes_checked": 1,
                    "nonzero_offset": null},
                "error": {"code": "c", "msg": "m"}, "notes": ["n"]}],
                "skipped": [{"device": "/dev/sda", "code": "mounted", "reason": "skipped"}],
                "erased": 1, "failed": 0, "cancelled": false, "bytes": 1, "seconds": 0.5}),
        );
        tolerated::<<PrepareImage as TaskMethod>::Output>(
            "standbye.prepare_image output",
            json!({"image_id": "i", "device": "/dev/nvme0n1", "source": "cache",
                "format": "qcow2", "compression": "none", "file_bytes": 1, "disk_bytes": 2,
                "bytes_written": 2, "zero_bytes_skipped": 0, "seconds": 0.5,
                "throughput": 4.0, "checksum": "sha256:00", "resumed": 1, "notes": ["n"]}),
        );
        tolerated::<<CacheImages as TaskMethod>::Output>(
            "standbye.cache_images output",
            json!({"cached": [{"id": "i", "bytes": 1, "checksum": null, "location": "disk",
                "device": "/dev/sdb", "already": false}],
                "skipped": [{"id": "j", "code": "no_room", "reason": "r"}],
                "evicted": ["k"], "capacity_bytes": 9, "used_bytes": 1}),
        );
        tolerated::<<RunImage as TaskMethod>::Output>(
            "standbye.run_image output",
            json!({"image_id": "i", "device": "/dev/vda", "boot": "kexec",
                "kernel": "/boot/vmlinuz", "initrd": ["/boot/initrd.img"],
                "cmdline": "root=PARTUUID=x ro", "entry_source": "symlinks",
                "config_drive": {"partition_number": 3, "start_bytes": 1, "size_bytes": 2,
                    "format": "vfat", "reused": false},
                "boot_entry": {"name": "Boot0003", "description": "debian",
                    "loader": "\\EFI\\debian\\shimx64.efi", "partition": 1,
                    "updated": false, "boot_order": ["0003"]},
                "bmc_next_boot": {"device": "disk", "persistent": false, "efi": true},
                "notes": ["n"]}),
        );
        // What a newer agent reports to the controller.
        tolerated::<<Handshake as Method>::Params>(
            "handshake params",
            json!({"agent_version": "9.0", "protocols": ["v1"], "boot_id": "b",
                "node": {"system_uuid": "u", "serial": "s", "macs": ["52:54:00:12:34:56"],
                    "hostname": "h"}, "token": "t"}),
        );
        tolerated::<<Log as Method>::Params>(
            "log params",
            json!({"records": [{"ts_ms": 1, "level": "info", "target": "t", "msg": "m",
                "fields": {"k": "v"}}], "dropped": 0}),
        );
        tolerated::<<TaskStatusUpdate as Method>::Params>(
            "task_status params",
            json!({"task_id": "t", "state": "complete", "percent": 100.0, "eta": null,
                "result": {"a": 1}, "seq": 3}),
        );
    }

    /// Only params the agent acts on refuse unknown fields; a `deny_unknown_fields` on any
    /// other type would cut off a newer peer. Checked on the source, so a new one cannot slip in.
    #[test]
    fn only_params_deny_unknown_fields() {
        const STRICT: &[&str] = &[
            "Empty",
            "TaskRef",
            "DiskEraseParams",
            "SetCredentialsParams",
            "BmcResetParams",
            "ChassisPowerParams",
            "BootDeviceParams",
            "ImageSpecWire",
            "PrepareImageParamsWire",
            "CacheImagesParams",
            "RunImageParams",
            "ConfigDriveContents",
            "ConfigDriveFetch",
            "QcParams",
            "Spec",
            "CpuSpec",
            "MemorySpec",
            "DiskSpec",
            "NicSpec",
            "GpuSpec",
            "BmcSpec",
            "Burnin",
            "MemoryBurnin",
            "CpuBurnin",
            "DiskBurnin",
            "NicBurnin",
            "FirmwareSpec",
            "FirmwareParams",
            "ComponentMatch",
            "ComponentSpec",
            "PackageWire",
            "NvmeUpdate",
            "PayloadUpdate",
            "SettingsSpec",
            "VariableWrite",
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim() != "#[serde(deny_unknown_fields)]" {
                    continue;
                }
                let item = lines[i + 1..]
                    .iter()
                    .find(|l| l.contains("struct ") || l.contains("enum "))
                    .unwrap_or(&"");
                assert!(
                    STRICT.iter().any(|s| item.contains(&format!(" {s} "))
                        || item.contains(&format!(" {s} {{}}"))),
                    "{}:{}: {item} denies unknown fields but is not a params type",
                    path.display(),
                    i + 1
                );
            }
        }
    }

    #[test]
    fn a_task_command_carries_its_task_id_beside_the_params() {
        let p = DiskEraseParams {
            devices: Some(vec!["/dev/loop3".into()]),
            ..DiskEraseParams::default()
        };
        let v = serde_json::to_value(TaskCommand {
            task_id: "t-1",
            params: &p,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"task_id": "t-1", "devices": ["/dev/loop3"]})
        );
    }
}
