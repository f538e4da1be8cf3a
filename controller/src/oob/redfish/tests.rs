//! The Redfish client against a small Redfish service on 127.0.0.1 over real TLS (rcgen
//! certificate, pinned by fingerprint): payloads shaped like DMTF's public mockups
//! (DSP2043 "public-rackmount1"), sessions that expire, task monitors, ExtendedInfo errors,
//! ETag preconditions.

use super::ops::{self, reset_type};
use super::types;
use super::{Client, trust};
use crate::oob::{BmcProtocol, BmcTarget, BmcTrust, BootTarget, OobAction, OobError, PowerChange};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use molar_protocol::Secret;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const USER: &str = "admin";
const PASSWORD: &str = "Rf-s3cret-pw";

#[derive(Default)]
struct Mock {
    power: String,
    sessions: HashSet<String>,
    next_session: u32,
    deleted: Vec<String>,
    logins: u32,
    sessions_supported: bool,
    reset_types: Vec<String>,
    resets: Vec<String>,
    pending_reset: Option<String>,
    task_polls: u32,
    task_fails: bool,
    boot: Value,
    led: bool,
    etag: u32,
    /// The next PATCH sees a changed resource (412) once.
    race_once: bool,
    if_matches: Vec<Option<String>>,
    vm_image: Option<String>,
    manager_resets: Vec<String>,
    unavailable_once: bool,
}

type Shared = Arc<Mutex<Mock>>;

fn extended(status: StatusCode, id: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "code": "Base.1.8.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [{
                "@odata.type": "#Message.v1_1_1.Message",
                "MessageId": id,
                "Message": message,
                "Severity": "Warning",
                "Resolution": "Retry the operation with a supported value."
            }]
        }})),
    )
        .into_response()
}

fn system(m: &Mock) -> Value {
    json!({
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "@odata.id": "/redfish/v1/Systems/437XR1138R2",
        "@odata.etag": format!("W/\"{}\"", m.etag),
        "Id": "437XR1138R2",
        "Name": "WebFrontEnd483",
        "SystemType": "Physical",
        "Manufacturer": "Contoso",
        "Model": "3500",
        "SerialNumber": "437XR1138R2",
        "UUID": "38947555-7742-3448-3784-823347823834",
        "PowerState": m.power,
        "LocationIndicatorActive": m.led,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Boot": m.boot,
        "ProcessorSummary": {"Count": 2, "Model": "Multi-Core Intel(R) Xeon(R) processor 7xxx Series"},
        "MemorySummary": {"TotalSystemMemoryGiB": 96, "Status": {"State": "Enabled"}},
        "Processors": {"@odata.id": "/redfish/v1/Systems/437XR1138R2/Processors"},
        "Memory": {"@odata.id": "/redfish/v1/Systems/437XR1138R2/Memory"},
        "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces"},
        "Storage": {"@odata.id": "/redfish/v1/Systems/437XR1138R2/Storage"},
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": m.reset_types,
            },
            "Oem": {}
        },
        "Oem": {"Contoso": {"Unknown": [1, 2, 3]}}
    })
}

fn authorised(m: &Mock, h: &HeaderMap) -> bool {
    if let Some(t) = h.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return m.sessions.contains(t);
    }
    if let Some(b) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        use base64::Engine;
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        return b == format!("Basic {want}");
    }
    false
}

fn apply_reset(m: &mut Mock, rt: &str) {
    m.power = match rt {
        "ForceOff" | "GracefulShutdown" => "Off",
        _ => "On",
    }
    .into();
    m.resets.push(rt.to_owned());
}

async fn handle(
    State(st): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut m = st.lock().unwrap();
    let path = uri.path().trim_end_matches('/').to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path == "/redfish/v1" && method == Method::GET {
        return axum::Json(json!({
            "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
            "@odata.id": "/redfish/v1/",
            "Id": "RootService",
            "RedfishVersion": "1.15.0",
            "UUID": "92384634-2938-2342-8820-489239905423",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "Managers": {"@odata.id": "/redfish/v1/Managers"},
            "UpdateService": {"@odata.id": "/redfish/v1/UpdateService"},
            "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        }))
        .into_response();
    }
    if path == "/redfish/v1/SessionService/Sessions" && method == Method::POST {
        if !m.sessions_supported {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        if body["UserName"] != USER || body["Password"] != PASSWORD {
            return extended(
                StatusCode::UNAUTHORIZED,
                "Base.1.8.NoValidSession",
                "There is no valid session established with the implementation.",
            );
        }
        m.next_session += 1;
        m.logins += 1;
        let token = format!("tok-{}-{}", m.next_session, rand::random::<u32>());
        m.sessions.insert(token.clone());
        let loc = format!("/redfish/v1/SessionService/Sessions/{}", m.next_session);
        let mut r = (
            StatusCode::CREATED,
            axum::Json(json!({"Id": m.next_session.to_string()})),
        )
            .into_response();
        r.headers_mut()
            .insert("X-Auth-Token", token.parse().unwrap());
        r.headers_mut().insert("Location", loc.parse().unwrap());
        return r;
    }
    if !authorised(&m, &headers) {
        return extended(
            StatusCode::UNAUTHORIZED,
            "Base.1.8.NoValidSession",
            "There is no valid session established with the implementation.",
        );
    }
    if m.unavailable_once {
        m.unavailable_once = false;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let sys = "/redfish/v1/Systems/437XR1138R2";
    let mgr = "/redfish/v1/Managers/BMC";
    let json = |v: Value| axum::Json(v).into_response();
    let col = |members: &[&str]| {
        axum::Json(json!({
            "Members@odata.count": members.len(),
            "Members": members.iter().map(|m| json!({"@odata.id": m})).collect::<Vec<_>>()
        }))
        .into_response()
    };
    match (method.clone(), path.as_str()) {
        (Method::DELETE, p) if p.starts_with("/redfish/v1/SessionService/Sessions/") => {
            let tok = headers
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            m.sessions.remove(&tok);
            m.deleted.push(p.to_owned());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/Systems") => col(&[sys]),
        (Method::GET, p) if p == sys => {
            let mut r = json(system(&m));
            r.headers_mut()
                .insert("ETag", format!("W/\"{}\"", m.etag).parse().unwrap());
            r
        }
        (Method::PATCH, p) if p == sys => {
            let im = headers
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            m.if_matches.push(im.clone());
            if m.race_once {
                m.race_once = false;
                m.etag += 1;
            }
            if im != Some(format!("W/\"{}\"", m.etag)) {
                return extended(
                    StatusCode::PRECONDITION_FAILED,
                    "Base.1.8.PreconditionFailed",
                    "The ETag supplied did not match the ETag required to change this resource.",
                );
            }
            if let Some(b) = body.get("Boot") {
                if let Some(t) = b.get("BootSourceOverrideTarget").and_then(Value::as_str) {
                    let allowed = m.boot["BootSourceOverrideTarget@Redfish.AllowableValues"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !allowed.iter().any(|a| a == t) {
                        return extended(
                            StatusCode::BAD_REQUEST,
                            "Base.1.8.PropertyValueNotInList",
                            &format!(
                                "The value {t} for the property BootSourceOverrideTarget is not in the list of acceptable values."
                            ),
                        );
                    }
                }
                for (k, v) in b.as_object().unwrap() {
                    m.boot[k] = v.clone();
                }
            }
            if let Some(on) = body.get("LocationIndicatorActive").and_then(Value::as_bool) {
                m.led = on;
            }
            m.etag += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset") => {
            let rt = body["ResetType"].as_str().unwrap_or_default().to_owned();
            if !m.reset_types.contains(&rt) {
                return extended(
                    StatusCode::BAD_REQUEST,
                    "Base.1.8.ActionParameterValueNotInList",
                    &format!(
                        "The value {rt} for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values."
                    ),
                );
            }
            m.pending_reset = Some(rt);
            m.task_polls = 0;
            let mut r = (StatusCode::ACCEPTED, axum::Json(json!({}))).into_response();
            r.headers_mut().insert(
                "Location",
                "/redfish/v1/TaskService/TaskMonitors/545".parse().unwrap(),
            );
            r
        }
        (Method::GET, "/redfish/v1/TaskService/TaskMonitors/545") => {
            m.task_polls += 1;
            if m.task_polls < 3 {
                return (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"@odata.type": "#Task.v1_7_0.Task", "Id": "545",
                        "TaskState": "Running", "PercentComplete": m.task_polls * 30})),
                )
                    .into_response();
            }
            if m.task_fails {
                return json(
                    json!({"Id": "545", "TaskState": "Exception", "TaskStatus": "Critical",
                    "Messages": [{"MessageId": "Base.1.8.InternalError",
                        "Message": "The request failed due to an internal service error."}]}),
                );
            }
            if let Some(rt) = m.pending_reset.take() {
                apply_reset(&mut m, &rt);
            }
            json(json!({"Id": "545", "TaskState": "Completed", "TaskStatus": "OK", "Messages": []}))
        }
        (Method::GET, "/redfish/v1/Managers") => col(&[mgr]),
        (Method::GET, p) if p == mgr => json(json!({
            "@odata.type": "#Manager.v1_19_0.Manager",
            "Id": "BMC", "ManagerType": "BMC", "FirmwareVersion": "1.45.455b66-rev4",
            "EthernetInterfaces": {"@odata.id": format!("{mgr}/EthernetInterfaces")},
            "VirtualMedia": {"@odata.id": format!("{mgr}/VirtualMedia")},
            "Actions": {"#Manager.Reset": {
                "target": format!("{mgr}/Actions/Manager.Reset"),
                "ResetType@Redfish.AllowableValues": ["ForceRestart", "GracefulRestart"]}}
        })),
        (Method::POST, "/redfish/v1/Managers/BMC/Actions/Manager.Reset") => {
            m.manager_resets
                .push(body["ResetType"].as_str().unwrap_or_default().into());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/Managers/BMC/EthernetInterfaces") => {
            col(&["/redfish/v1/Managers/BMC/EthernetInterfaces/1"])
        }
        (Method::GET, "/redfish/v1/Managers/BMC/EthernetInterfaces/1") => {
            json(json!({"Id": "1", "MACAddress": "23:11:8A:33:CF:EA"}))
        }
        (Method::GET, "/redfish/v1/Managers/BMC/VirtualMedia") => col(&[
            "/redfish/v1/Managers/BMC/VirtualMedia/Floppy1",
            "/redfish/v1/Managers/BMC/VirtualMedia/CD1",
        ]),
        (Method::GET, "/redfish/v1/Managers/BMC/VirtualMedia/Floppy1") => {
            json(json!({"Id": "Floppy1", "MediaTypes": ["Floppy", "USBStick"], "Inserted": false}))
        }
        (Method::GET, "/redfish/v1/Managers/BMC/VirtualMedia/CD1") => json(json!({
            "Id": "CD1", "MediaTypes": ["CD", "DVD"], "Image": m.vm_image,
            "Inserted": m.vm_image.is_some(),
            "Actions": {
                "#VirtualMedia.InsertMedia": {"target": "/redfish/v1/Managers/BMC/VirtualMedia/CD1/Actions/VirtualMedia.InsertMedia"},
                "#VirtualMedia.EjectMedia": {"target": "/redfish/v1/Managers/BMC/VirtualMedia/CD1/Actions/VirtualMedia.EjectMedia"}
            }
        })),
        (
            Method::POST,
            "/redfish/v1/Managers/BMC/VirtualMedia/CD1/Actions/VirtualMedia.InsertMedia",
        ) => {
            if m.vm_image.is_some() {
                return extended(
                    StatusCode::BAD_REQUEST,
                    "Base.1.8.ResourceInUse",
                    "The change to the requested resource failed because the resource is in use or in transition.",
                );
            }
            m.vm_image = body["Image"].as_str().map(str::to_owned);
            StatusCode::NO_CONTENT.into_response()
        }
        (
            Method::POST,
            "/redfish/v1/Managers/BMC/VirtualMedia/CD1/Actions/VirtualMedia.EjectMedia",
        ) => {
            m.vm_image = None;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Processors") => col(&[
            "/redfish/v1/Systems/437XR1138R2/Processors/CPU1",
            "/redfish/v1/Systems/437XR1138R2/Processors/CPU2",
        ]),
        (Method::GET, p) if p.starts_with("/redfish/v1/Systems/437XR1138R2/Processors/CPU") => {
            json(
                json!({"Id": p.rsplit('/').next().unwrap(), "ProcessorType": "CPU",
                "Model": "Multi-Core Intel(R) Xeon(R) processor 7xxx Series",
                "TotalCores": 8, "TotalThreads": 16}),
            )
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Memory") => {
            col(&["/redfish/v1/Systems/437XR1138R2/Memory/DIMM1"])
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Memory/DIMM1") => {
            json(json!({"Id": "DIMM1", "CapacityMiB": 32768, "MemoryDeviceType": "DDR4"}))
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces") => col(&[
            "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces/12446A3B0411",
            "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces/12446A3B8890",
        ]),
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces/12446A3B0411") => json(
            json!({"Id": "12446A3B0411", "MACAddress": "12:44:6A:3B:04:11",
                "PermanentMACAddress": "12:44:6A:3B:04:11", "SpeedMbps": 1000}),
        ),
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/EthernetInterfaces/12446A3B8890") => {
            json(json!({"Id": "12446A3B8890", "MACAddress": "12-44-6A-3B-88-90"}))
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Storage") => {
            col(&["/redfish/v1/Systems/437XR1138R2/Storage/1"])
        }
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Storage/1") => json(json!({"Id": "1",
            "Drives": [{"@odata.id": "/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/3D58ECBC375FD9F2"}]})),
        (Method::GET, "/redfish/v1/Systems/437XR1138R2/Storage/1/Drives/3D58ECBC375FD9F2") => json(
            json!({"Id": "3D58ECBC375FD9F2", "Model": "3000GT8", "SerialNumber": "72D0A037FRD27",
                "CapacityBytes": 899527000000u64, "MediaType": "HDD"}),
        ),
        (Method::GET, "/redfish/v1/UpdateService") => json(json!({"Id": "UpdateService",
            "FirmwareInventory": {"@odata.id": "/redfish/v1/UpdateService/FirmwareInventory"}})),
        (Method::GET, "/redfish/v1/UpdateService/FirmwareInventory") => col(&[
            "/redfish/v1/UpdateService/FirmwareInventory/BMC",
            "/redfish/v1/UpdateService/FirmwareInventory/BIOS",
        ]),
        (Method::GET, "/redfish/v1/UpdateService/FirmwareInventory/BMC") => json(
            json!({"Id": "BMC", "Name": "Contoso BMC Firmware", "Version": "1.45.455b66-rev4"}),
        ),
        (Method::GET, "/redfish/v1/UpdateService/FirmwareInventory/BIOS") => {
            json(json!({"Id": "BIOS", "Name": "Contoso BIOS Firmware", "Version": "P79 v1.45"}))
        }
        _ => extended(
            StatusCode::NOT_FOUND,
            "Base.1.8.ResourceMissingAtURI",
            &format!("The resource at the URI {path} was not found."),
        ),
    }
}

struct Bmc {
    port: u16,
    fingerprint: String,
    state: Shared,
}

async fn start_bmc() -> Bmc {
    crate::pki::install_default_provider();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let fingerprint = crate::pki::fingerprint(cert.der());
    let cfg = rustls::ServerConfig::builder_with_provider(crate::pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let state: Shared = Arc::new(Mutex::new(Mock {
        power: "Off".into(),
        sessions_supported: true,
        reset_types: [
            "On",
            "ForceOff",
            "GracefulShutdown",
            "ForceRestart",
            "PowerCycle",
            "Nmi",
        ]
        .map(String::from)
        .to_vec(),
        boot: json!({
            "BootSourceOverrideEnabled": "Disabled",
            "BootSourceOverrideTarget": "None",
            "BootSourceOverrideTarget@Redfish.AllowableValues":
                ["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "UefiHttp"],
            "BootSourceOverrideMode": "UEFI"
        }),
        ..Default::default()
    }));
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| router.clone().oneshot(req),
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Bmc {
        port,
        fingerprint,
        state,
    }
}

fn target(bmc: &Bmc, password: &str, trust: Option<BmcTrust>) -> BmcTarget {
    BmcTarget {
        host: "127.0.0.1".into(),
        port: bmc.port,
        username: USER.into(),
        password: Secret::new(password),
        allow_ipmi15: false,
        protocol: BmcProtocol::Redfish,
        trust,
    }
}

fn pinned(bmc: &Bmc) -> BmcTarget {
    target(
        bmc,
        PASSWORD,
        Some(BmcTrust::Fingerprint(bmc.fingerprint.clone())),
    )
}

async fn client(t: &BmcTarget) -> Client {
    let mut c = Client::new(t).unwrap();
    c.task_poll = Duration::from_millis(5);
    c.retry_pause = Duration::from_millis(5);
    c.login().await.unwrap();
    c
}

#[test]
fn molar_power_changes_map_to_reset_types() {
    let all = [
        (PowerChange::On, "On"),
        (PowerChange::Off, "ForceOff"),
        (PowerChange::Soft, "GracefulShutdown"),
        (PowerChange::Cycle, "PowerCycle"),
        (PowerChange::Reset, "ForceRestart"),
    ];
    for (c, rt) in all {
        assert_eq!(reset_type(c), rt);
    }
    let advertised = vec!["On".to_string(), "ForceOff".to_string()];
    assert!(ops::check_allowed("h:1", "x", "On", Some(&advertised)).is_ok());
    assert!(ops::check_allowed("h:1", "x", "PowerCycle", None).is_ok());
    let e = ops::check_allowed(
        "h:1",
        "ComputerSystem.Reset",
        "PowerCycle",
        Some(&advertised),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("PowerCycle is not among") && e.contains("On, ForceOff"),
        "{e}"
    );
}

#[test]
fn payloads_parse_tolerantly_and_errors_are_verbatim() {
    let sys: types::ComputerSystem = serde_json::from_value(system(&Mock {
        power: "On".into(),
        reset_types: vec!["On".into()],
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(
        sys.uuid.as_deref(),
        Some("38947555-7742-3448-3784-823347823834")
    );
    let reset = sys.actions.system_reset.unwrap();
    assert_eq!(reset.allowable("ResetType"), Some(vec!["On".to_string()]));
    assert!(reset.target.ends_with("ComputerSystem.Reset"));
    // A minimal system (no optional field at all) is still a system.
    let bare: types::ComputerSystem = serde_json::from_str("{\"Id\": \"1\"}").unwrap();
    assert!(bare.power_state.is_none() && bare.actions.system_reset.is_none());
    let body = br#"{"error":{"code":"Base.1.8.GeneralError","message":"general",
        "@Message.ExtendedInfo":[{"MessageId":"Base.1.8.PropertyValueNotInList",
        "Message":"The value Floppy for the property BootSourceOverrideTarget is not in the list of acceptable values.",
        "Resolution":"Choose a value from the enumeration list."},{"MessageId":"Base.1.8.Success"}]}}"#;
    assert_eq!(
        types::error_text(body).unwrap(),
        "Base.1.8.PropertyValueNotInList: The value Floppy for the property \
         BootSourceOverrideTarget is not in the list of acceptable values. (resolution: Choose \
         a value from the enumeration list.); Base.1.8.Success"
    );
    assert_eq!(
        types::error_text(br#"{"error":{"message":"only this"}}"#).as_deref(),
        Some("only this")
    );
    assert_eq!(types::error_text(b"<html>"), None);
    assert_eq!(
        ops::normalise_mac("12-44-6A-3B-88-90").as_deref(),
        Some("12:44:6a:3b:88:90")
    );
    assert_eq!(ops::normalise_mac("00:00:00:00:00:00"), None);
    assert_eq!(ops::normalise_mac("zz"), None);
}

#[tokio::test]
async fn power_runs_through_reset_and_its_task_monitor() {
    let bmc = start_bmc().await;
    let t = pinned(&bmc);
    let mut c = client(&t).await;
    assert!(c.has_session());
    let out = ops::run(&mut c, &OobAction::Power(PowerChange::On))
        .await
        .unwrap();
    assert_eq!(out.power_on, Some(true), "{out:?}");
    assert!(out.message.contains("On"), "{}", out.message);
    for (change, on) in [
        (PowerChange::Off, false),
        (PowerChange::Cycle, true),
        (PowerChange::Soft, false),
        (PowerChange::Reset, true),
    ] {
        let out = ops::run(&mut c, &OobAction::Power(change)).await.unwrap();
        assert_eq!(out.power_on, Some(on), "{change:?}");
    }
    let st = ops::run(&mut c, &OobAction::PowerStatus).await.unwrap();
    assert_eq!(st.power_on, Some(true));
    {
        let m = bmc.state.lock().unwrap();
        assert_eq!(
            m.resets,
            [
                "On",
                "ForceOff",
                "PowerCycle",
                "GracefulShutdown",
                "ForceRestart"
            ]
        );
        assert!(m.task_polls >= 3, "the monitor was polled to completion");
    }
    // Not advertised: refused before anything is sent, naming what the BMC offers.
    bmc.state.lock().unwrap().reset_types = vec!["On".into(), "ForceOff".into()];
    let e = ops::run(&mut c, &OobAction::Power(PowerChange::Cycle))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PowerCycle is not among") && e.contains("On, ForceOff"),
        "{e}"
    );
    assert_eq!(bmc.state.lock().unwrap().resets.len(), 5);
    // A task that ends in an exception is a failure carrying its messages.
    bmc.state.lock().unwrap().task_fails = true;
    let e = ops::run(&mut c, &OobAction::Power(PowerChange::Off))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("task Exception") && e.contains("Base.1.8.InternalError"),
        "{e}"
    );
    c.close().await;
    let m = bmc.state.lock().unwrap();
    assert_eq!(m.deleted, ["/redfish/v1/SessionService/Sessions/1"]);
    assert!(m.sessions.is_empty(), "the session was deleted on close");
}

#[tokio::test]
async fn an_expired_session_is_renewed_once() {
    let bmc = start_bmc().await;
    let mut c = client(&pinned(&bmc)).await;
    bmc.state.lock().unwrap().sessions.clear();
    let st = ops::run(&mut c, &OobAction::PowerStatus).await.unwrap();
    assert_eq!(st.power_on, Some(false));
    assert_eq!(bmc.state.lock().unwrap().logins, 2);
    // A 503 is retried.
    bmc.state.lock().unwrap().unavailable_once = true;
    ops::run(&mut c, &OobAction::PowerStatus).await.unwrap();
    c.close().await;
}

#[tokio::test]
async fn wrong_passwords_and_untrusted_certificates_are_refused_without_secrets() {
    let bmc = start_bmc().await;
    let secret = "Wr0ng-Rf-pass";
    let e = super::verify(&target(
        &bmc,
        secret,
        Some(BmcTrust::Fingerprint(bmc.fingerprint.clone())),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, OobError::Auth { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("NoValidSession") && !text.contains(secret),
        "{text}"
    );
    // Basic authentication when the service has no sessions: wrong password refused too.
    bmc.state.lock().unwrap().sessions_supported = false;
    let e = super::verify(&target(&bmc, secret, Some(BmcTrust::Insecure)))
        .await
        .unwrap_err();
    assert!(matches!(e, OobError::Auth { .. }), "{e}");
    let id = super::verify(&target(&bmc, PASSWORD, Some(BmcTrust::Insecure)))
        .await
        .unwrap();
    assert_eq!(id.mac.as_deref(), Some("23:11:8a:33:cf:ea"));
    bmc.state.lock().unwrap().sessions_supported = true;
    // No trust option: refused, showing the fingerprint to pin.
    let e = super::verify(&target(&bmc, PASSWORD, None))
        .await
        .unwrap_err();
    match &e {
        OobError::Untrusted { fingerprint, .. } => assert_eq!(*fingerprint, bmc.fingerprint),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("--bmc-fingerprint"), "{e}");
    // Another certificate's fingerprint: refused the same way.
    let other = format!("sha256:{}", "ab".repeat(32));
    let e = super::verify(&target(&bmc, PASSWORD, Some(BmcTrust::Fingerprint(other))))
        .await
        .unwrap_err();
    assert!(matches!(e, OobError::Untrusted { .. }), "{e}");
    // A CA that did not sign the BMC's certificate.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    assert!(trust::check_ca_pem(&ca.pem()).is_ok());
    let e = super::verify(&target(&bmc, PASSWORD, Some(BmcTrust::Ca(ca.pem()))))
        .await
        .unwrap_err();
    assert!(matches!(e, OobError::Untrusted { .. }), "{e}");
    assert_eq!(
        bmc.state.lock().unwrap().logins,
        0,
        "no session through an untrusted certificate"
    );
    // Pinned: works, and the identity is the system's UUID.
    let id = super::verify(&pinned(&bmc)).await.unwrap();
    assert_eq!(
        id.system_guid.as_deref(),
        Some("38947555-7742-3448-3784-823347823834")
    );
    assert_eq!(id.firmware_version.as_deref(), Some("1.45.455b66-rev4"));
    assert_eq!(id.cipher_suite, None);
    assert!(super::probe(&target(&bmc, PASSWORD, None)).await.is_err());
    assert!(super::probe(&pinned(&bmc)).await.unwrap());
}

#[tokio::test]
async fn boot_override_identify_and_bmc_reset_patch_with_etags() {
    let bmc = start_bmc().await;
    let mut c = client(&pinned(&bmc)).await;
    let out = ops::run(
        &mut c,
        &OobAction::BootDevice {
            device: BootTarget::Pxe,
            persistent: false,
            efi: true,
        },
    )
    .await
    .unwrap();
    assert!(out.message.contains("Pxe"), "{}", out.message);
    {
        let m = bmc.state.lock().unwrap();
        assert_eq!(m.boot["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(m.boot["BootSourceOverrideEnabled"], "Once");
        assert_eq!(m.boot["BootSourceOverrideMode"], "UEFI");
        assert_eq!(m.if_matches, [Some("W/\"0\"".to_string())]);
    }
    // A concurrent change (412) is re-read and retried with the new ETag.
    bmc.state.lock().unwrap().race_once = true;
    ops::run(
        &mut c,
        &OobAction::BootDevice {
            device: BootTarget::Disk,
            persistent: true,
            efi: false,
        },
    )
    .await
    .unwrap();
    {
        let m = bmc.state.lock().unwrap();
        assert_eq!(m.boot["BootSourceOverrideTarget"], "Hdd");
        assert_eq!(m.boot["BootSourceOverrideEnabled"], "Continuous");
        assert_eq!(m.boot["BootSourceOverrideMode"], "Legacy");
        assert_eq!(m.if_matches.len(), 3);
    }
    // A target the BMC does not advertise is refused before the PATCH.
    bmc.state.lock().unwrap().boot["BootSourceOverrideTarget@Redfish.AllowableValues"] =
        json!(["Pxe", "Hdd"]);
    let e = ops::run(
        &mut c,
        &OobAction::BootDevice {
            device: BootTarget::Cdrom,
            persistent: false,
            efi: true,
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("Cd is not among"), "{e}");
    ops::run(
        &mut c,
        &OobAction::BootDevice {
            device: BootTarget::None,
            persistent: false,
            efi: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        bmc.state.lock().unwrap().boot["BootSourceOverrideEnabled"],
        "Disabled"
    );
    ops::run(&mut c, &OobAction::Identify { seconds: None })
        .await
        .unwrap();
    assert!(bmc.state.lock().unwrap().led);
    ops::run(&mut c, &OobAction::Identify { seconds: Some(0) })
        .await
        .unwrap();
    assert!(!bmc.state.lock().unwrap().led);
    ops::run(&mut c, &OobAction::BmcReset).await.unwrap();
    assert_eq!(
        bmc.state.lock().unwrap().manager_resets,
        ["GracefulRestart"]
    );
    c.close().await;
}

#[tokio::test]
async fn an_extended_info_error_is_reported_verbatim() {
    let bmc = start_bmc().await;
    let mut c = client(&pinned(&bmc)).await;
    // The service refuses a ResetType the client did not know it lacked.
    let e = c
        .post(
            "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset",
            &json!({"ResetType": "PushPowerButton"}),
            "ComputerSystem.Reset",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 400")
            && e.contains("Base.1.8.ActionParameterValueNotInList: The value PushPowerButton"),
        "{e}"
    );
    c.close().await;
}

#[tokio::test]
async fn virtual_media_and_the_out_of_band_inventory() {
    let bmc = start_bmc().await;
    let t = pinned(&bmc);
    let out = super::boot_from_media(&t, "https://127.0.0.1:9/molar.iso")
        .await
        .unwrap();
    assert!(
        out.message.contains("virtual media inserted"),
        "{}",
        out.message
    );
    {
        let m = bmc.state.lock().unwrap();
        assert_eq!(m.vm_image.as_deref(), Some("https://127.0.0.1:9/molar.iso"));
        assert_eq!(m.boot["BootSourceOverrideTarget"], "Cd");
        assert_eq!(m.boot["BootSourceOverrideEnabled"], "Once");
    }
    // Inserting again replaces the image (eject first).
    super::boot_from_media(&t, "https://127.0.0.1:9/other.iso")
        .await
        .unwrap();
    assert_eq!(
        bmc.state.lock().unwrap().vm_image.as_deref(),
        Some("https://127.0.0.1:9/other.iso")
    );
    super::eject_media(&t).await.unwrap();
    assert_eq!(bmc.state.lock().unwrap().vm_image, None);
    let inv = super::inventory(&t).await.unwrap();
    assert_eq!(inv.source, "redfish");
    assert_eq!(
        inv.system_uuid.as_deref(),
        Some("38947555-7742-3448-3784-823347823834")
    );
    assert_eq!(inv.serial.as_deref(), Some("437XR1138R2"));
    assert_eq!(inv.model.as_deref(), Some("3500"));
    assert_eq!(inv.processors.len(), 2);
    assert_eq!(inv.processors[0].cores, Some(8));
    assert_eq!(inv.memory_mib, Some(96 * 1024));
    assert_eq!(inv.macs, ["12:44:6a:3b:04:11", "12:44:6a:3b:88:90"]);
    assert_eq!(inv.drives.len(), 1);
    assert_eq!(inv.drives[0].capacity_bytes, Some(899527000000));
    assert_eq!(inv.firmware.len(), 2);
    assert_eq!(inv.firmware[1].version.as_deref(), Some("P79 v1.45"));
    let m = bmc.state.lock().unwrap();
    assert!(m.sessions.is_empty(), "every operation deleted its session");
}

#[tokio::test]
async fn enrolment_over_redfish_pins_stores_and_drives_the_bmc() {
    use crate::enrol::{EnrolError, EnrolRequest, enrol};
    let bmc = start_bmc().await;
    let store = crate::store::Store::open_in_memory().unwrap();
    let req = |password: &str, trust: Option<BmcTrust>| EnrolRequest {
        name: "rack1-07".into(),
        host: "127.0.0.1".into(),
        port: Some(bmc.port),
        username: USER.into(),
        password: Secret::new(password),
        allow_ipmi15: false,
        // A bare address: the probe finds the Redfish service.
        protocol: None,
        trust,
    };
    // No trust option: refused with the fingerprint to confirm, nothing stored.
    let e = enrol(&store, req(PASSWORD, None)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&bmc.fingerprint), "{text}");
    assert!(store.resolve_server("rack1-07").await.unwrap().is_none());
    // A wrong password: refused, nothing stored, the password not repeated.
    let wrong = "Wr0ng-Rf-pass";
    let pin = || {
        Some(BmcTrust::Fingerprint(
            bmc.fingerprint.to_uppercase().replace("SHA256:", ""),
        ))
    };
    let e = enrol(&store, req(wrong, pin())).await.unwrap_err();
    assert!(matches!(e, EnrolError::Bmc(OobError::Auth { .. })), "{e}");
    assert!(!e.to_string().contains(wrong));
    assert!(store.resolve_server("rack1-07").await.unwrap().is_none());
    // Trust options are for Redfish only.
    let mut ipmi = req(PASSWORD, Some(BmcTrust::Insecure));
    ipmi.protocol = Some(BmcProtocol::Ipmi);
    assert!(matches!(
        enrol(&store, ipmi).await,
        Err(EnrolError::Invalid(_))
    ));
    // Pinned (typed in upper case without the prefix): enrolled with its inventory.
    let server = enrol(&store, req(PASSWORD, pin())).await.unwrap();
    let rec = store.bmc(&server.id).await.unwrap().unwrap();
    assert_eq!(rec.protocol, "redfish");
    assert_eq!(
        rec.tls_fingerprint.as_deref(),
        Some(bmc.fingerprint.as_str())
    );
    assert_eq!(
        rec.system_guid.as_deref(),
        Some("38947555-7742-3448-3784-823347823834")
    );
    assert_eq!(rec.mac.as_deref(), Some("23:11:8a:33:cf:ea"));
    let inv = rec.oob_inventory.clone().unwrap();
    assert_eq!(inv["source"], "redfish");
    assert_eq!(inv["serial"], "437XR1138R2");
    assert_eq!(inv["macs"][0], "12:44:6a:3b:04:11");
    assert!(!serde_json::to_string(&rec).unwrap().contains(PASSWORD));
    // The stored target drives the BMC over Redfish through the common entry point.
    let t = store.bmc_target(&server.id).await.unwrap().unwrap();
    assert_eq!(t.protocol, BmcProtocol::Redfish);
    assert_eq!(
        t.trust,
        Some(BmcTrust::Fingerprint(bmc.fingerprint.clone()))
    );
    let out = crate::oob::perform(&t, &OobAction::Power(PowerChange::On))
        .await
        .unwrap();
    assert_eq!(out.power_on, Some(true));
    assert_eq!(bmc.state.lock().unwrap().power, "On");
    // The same BMC again is refused by address.
    let mut again = req(PASSWORD, pin());
    again.name = "other".into();
    assert!(matches!(
        enrol(&store, again).await,
        Err(EnrolError::Refused(_))
    ));
}

#[tokio::test]
async fn media_boot_goes_through_the_common_entry_point_and_is_refused_for_ipmi() {
    use crate::requests::parse_action;
    let url = "https://127.0.0.1:8443/images/molar.iso";
    let a = parse_action("boot_from_media", Some(url), false, false).unwrap();
    assert_eq!(a, OobAction::BootFromMedia { url: url.into() });
    for bad in [
        None,
        Some(""),
        Some("ftp://h/x.iso"),
        Some("https://"),
        Some("https:///x.iso"),
        Some("https://h/a b.iso"),
        Some("https://h/\u{1b}[2J"),
    ] {
        assert!(
            parse_action("boot_from_media", bad, false, false).is_err(),
            "{bad:?}"
        );
    }
    let long = format!("https://h/{}", "a".repeat(1100));
    let e = parse_action("boot_from_media", Some(&long), false, false)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{e}");
    assert_eq!(
        parse_action("eject_media", None, false, false).unwrap(),
        OobAction::EjectMedia
    );
    let bmc = start_bmc().await;
    let t = pinned(&bmc);
    let out = crate::oob::perform(&t, &a).await.unwrap();
    assert!(out.message.contains(url), "{}", out.message);
    assert_eq!(bmc.state.lock().unwrap().vm_image.as_deref(), Some(url));
    crate::oob::perform(&t, &OobAction::EjectMedia)
        .await
        .unwrap();
    assert_eq!(bmc.state.lock().unwrap().vm_image, None);
    // IPMI has no virtual media: a clear refusal naming Redfish, nothing sent.
    let ipmi = BmcTarget {
        protocol: BmcProtocol::Ipmi,
        port: 1,
        ..t
    };
    struct NoTransport;
    impl molar_ipmi::transport::Transport for NoTransport {
        type Error = OobError;
        fn request(&mut self, _: u8, _: u8, _: &[u8]) -> Result<Vec<u8>, OobError> {
            panic!("nothing may be sent to an IPMI BMC for virtual media")
        }
    }
    let e = crate::oob::ops::run(&mut NoTransport, &ipmi.addr(), &a).unwrap_err();
    assert!(matches!(e, OobError::RedfishOnly { .. }), "{e}");
    assert!(e.to_string().contains("needs a Redfish BMC"), "{e}");
}
