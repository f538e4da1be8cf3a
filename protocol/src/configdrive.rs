//! Wire types of the config drive that `standbye.run_image` writes: what the operator API of
//! the reference family accepts as `config_drive` (an object of documents, or a ready image),
//! the filesystem to build, and what the agent reports having written.
//!
//! `config_drive` is a param of a destructive method: the documents object refuses fields it
//! does not know (a misspelt `user_data` would otherwise boot a machine without its
//! configuration), `meta_data`, `network_data` and `vendor_data` must be JSON objects, and
//! every size is bounded here, before the agent touches a disk. The outcome tolerates fields
//! a newer agent adds.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// A JSON object (`meta_data`, `network_data`, `vendor_data`).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The largest config drive partition the agent creates, and the largest ready image it
/// accepts (decompressed).
pub const MAX_CONFIG_DRIVE_BYTES: u64 = 64 << 20;
/// The documents of a [`ConfigDriveContents`] together, as the agent writes them (each is
/// written twice, under `latest/` and the dated version, so twice this fits in
/// [`MAX_CONFIG_DRIVE_BYTES`] with room for the filesystem).
pub const MAX_CONTENTS_BYTES: usize = 16 << 20;
/// The base64 text of a ready image: gzip of [`MAX_CONFIG_DRIVE_BYTES`] of incompressible
/// data, base64-encoded, with room for the gzip framing.
pub const MAX_IMAGE_BASE64_BYTES: usize = 88 << 20;
/// `url` and `checksum` of the fetched form (a checksum may itself be a URL).
pub const MAX_URL_BYTES: usize = 8 << 10;

/// `config_drive` of `standbye.run_image`: the documents (what an operator API of the
/// reference family accepts), or a ready image, inline or by URL.
///
/// On the wire: an object with `meta_data` is [`ConfigDrive::Contents`]; an object with `url`
/// is [`ConfigDrive::Fetch`]; a string is [`ConfigDrive::Image`] (a bare URL string, which
/// the reference family also accepts, is refused: molar never writes what it cannot verify,
/// so a URL comes with its checksum).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConfigDrive {
    Contents(ConfigDriveContents),
    /// gzip then base64 of a ready config drive image (vfat or ISO 9660 labelled `config-2`).
    Image(String),
    /// A ready image (optionally gzipped) to download; `checksum` as for images:
    /// `sha256:HEX`, `sha512:HEX` or the URL of a SHA256SUMS-style file; `ca_pem` as for
    /// images, a CA trusted besides the public roots for its https URLs.
    Fetch {
        url: String,
        checksum: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

/// The documents of a config drive, written as `openstack/{latest,VERSION}/meta_data.json`,
/// `network_data.json`, `vendor_data2.json` and `user_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDriveContents {
    /// `meta_data.json` (uuid, hostname, public_keys, ...).
    pub meta_data: JsonObject,
    /// `network_data.json` (links, networks, services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<JsonObject>,
    /// `user_data`, written only when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<UserData>,
    /// `vendor_data2.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<JsonObject>,
}

/// `user_data`: text written as given (a cloud-config, a script, a MIME multipart), or a JSON
/// object or array, written as its JSON text (what the reference family does with one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserData {
    Text(String),
    Json(UserDataJson),
}

/// The JSON forms of `user_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserDataJson {
    Object(JsonObject),
    Array(Vec<serde_json::Value>),
}

impl UserData {
    /// The bytes of the `user_data` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            UserData::Text(s) => s.as_bytes().to_vec(),
            // Serializing a JSON value to a Vec cannot fail (string keys, no I/O).
            UserData::Json(j) => serde_json::to_vec(j).unwrap_or_default(),
        }
    }
}

impl ConfigDriveContents {
    /// The files of one version directory, by name, in the order they are written.
    pub fn files(&self) -> Vec<(&'static str, Vec<u8>)> {
        let json = |m: &JsonObject| serde_json::to_vec(m).unwrap_or_default();
        let mut files = vec![
            ("meta_data.json", json(&self.meta_data)),
            (
                "network_data.json",
                json(self.network_data.as_ref().unwrap_or(&JsonObject::new())),
            ),
            (
                "vendor_data2.json",
                json(self.vendor_data.as_ref().unwrap_or(&JsonObject::new())),
            ),
        ];
        if let Some(u) = &self.user_data {
            files.push(("user_data", u.to_bytes()));
        }
        files
    }

    /// Bytes of all documents as written once.
    pub fn size(&self) -> usize {
        self.files().iter().map(|(_, b)| b.len()).sum()
    }
}

/// The fetched form's fields, strict like every destructive param.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDriveFetch {
    url: String,
    checksum: String,
    #[serde(default)]
    ca_pem: Option<String>,
}

impl<'de> Deserialize<'de> for ConfigDrive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let drive = match value {
            serde_json::Value::String(s) => {
                if s.len() > MAX_IMAGE_BASE64_BYTES {
                    return Err(D::Error::custom(format!(
                        "config_drive image: {} bytes of base64, more than the {} allowed",
                        s.len(),
                        MAX_IMAGE_BASE64_BYTES
                    )));
                }
                let head = s.trim_start();
                if head.starts_with("http://") || head.starts_with("https://") {
                    return Err(D::Error::custom(
                        "config_drive: a URL needs a checksum: give {\"url\": ..., \"checksum\": ...}",
                    ));
                }
                ConfigDrive::Image(s)
            }
            serde_json::Value::Object(map) if map.contains_key("url") => {
                let f: ConfigDriveFetch = serde_json::from_value(serde_json::Value::Object(map))
                    .map_err(|e| D::Error::custom(format!("config_drive: {e}")))?;
                for (field, v) in [("url", &f.url), ("checksum", &f.checksum)] {
                    if v.is_empty() || v.len() > MAX_URL_BYTES {
                        return Err(D::Error::custom(format!(
                            "config_drive {field}: must be 1 to {MAX_URL_BYTES} bytes"
                        )));
                    }
                }
                if f.ca_pem
                    .as_ref()
                    .is_some_and(|p| p.len() > crate::image::MAX_CA_PEM)
                {
                    return Err(D::Error::custom(format!(
                        "config_drive ca_pem: longer than {} bytes",
                        crate::image::MAX_CA_PEM
                    )));
                }
                ConfigDrive::Fetch {
                    url: f.url,
                    checksum: f.checksum,
                    ca_pem: f.ca_pem,
                }
            }
            serde_json::Value::Object(map) => {
                let c: ConfigDriveContents = serde_json::from_value(serde_json::Value::Object(map))
                    .map_err(|e| D::Error::custom(format!("config_drive: {e}")))?;
                let size = c.size();
                if size > MAX_CONTENTS_BYTES {
                    return Err(D::Error::custom(format!(
                        "config_drive: the documents come to {size} bytes, more than the \
                         {MAX_CONTENTS_BYTES} allowed"
                    )));
                }
                ConfigDrive::Contents(c)
            }
            other => {
                return Err(D::Error::custom(format!(
                    "config_drive: expected an object or a string, got {}",
                    json_kind(&other)
                )));
            }
        };
        Ok(drive)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The filesystem of a config drive built from documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigDriveFormat {
    /// FAT labelled `config-2` (what a partition on a disk usually holds).
    #[default]
    Vfat,
    /// ISO 9660 with volume id `config-2`, Rock Ridge and Joliet names.
    Iso9660,
}

impl ConfigDriveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigDriveFormat::Vfat => "vfat",
            ConfigDriveFormat::Iso9660 => "iso9660",
        }
    }
}

impl std::fmt::Display for ConfigDriveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConfigDriveFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vfat" => Ok(ConfigDriveFormat::Vfat),
            "iso9660" => Ok(ConfigDriveFormat::Iso9660),
            other => Err(format!(
                "unknown config drive format {other:?} (vfat, iso9660)"
            )),
        }
    }
}

/// What the agent wrote: the partition holding the config drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDriveOutcome {
    /// Partition number as the kernel names it (`sda2` is 2).
    pub partition_number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The filesystem written (detected, for a ready image).
    pub format: ConfigDriveFormat,
    /// An existing `config-2` partition was rewritten in place rather than a new one added.
    pub reused: bool,
    /// What the agent noticed without failing (the kernel did not re-read the table ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ConfigDrive, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn documents_decode_and_round_trip() {
        let v = json!({"meta_data": {"uuid": "u-1", "hostname": "h"},
            "network_data": {"links": []}, "user_data": "#cloud-config\n",
            "vendor_data": {"a": 1}});
        let d = parse(v.clone()).unwrap();
        let ConfigDrive::Contents(c) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(c.meta_data["uuid"], "u-1");
        assert_eq!(c.user_data, Some(UserData::Text("#cloud-config\n".into())));
        assert_eq!(serde_json::to_value(&d).unwrap(), v);
    }

    #[test]
    fn only_meta_data_is_required_and_user_data_is_written_only_when_given() {
        let ConfigDrive::Contents(c) = parse(json!({"meta_data": {}})).unwrap() else {
            panic!()
        };
        let names: Vec<_> = c.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["meta_data.json", "network_data.json", "vendor_data2.json"]
        );
        assert!(parse(json!({"network_data": {}})).is_err());
    }

    #[test]
    fn json_user_data_is_written_as_json_text() {
        let ConfigDrive::Contents(c) =
            parse(json!({"meta_data": {}, "user_data": {"a": [1]}})).unwrap()
        else {
            panic!()
        };
        let files = c.files();
        assert_eq!(files[3], ("user_data", br#"{"a":[1]}"#.to_vec()));
        assert!(parse(json!({"meta_data": {}, "user_data": 5})).is_err());
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused_naming_them() {
        let e = parse(json!({"meta_data": {}, "userdata": "x"})).unwrap_err();
        assert!(e.contains("userdata"), "{e}");
        let e = parse(json!({"meta_data": "x"})).unwrap_err();
        assert!(e.contains("config_drive") && e.contains("map"), "{e}");
        let e = parse(json!({"meta_data": {}, "network_data": []})).unwrap_err();
        assert!(e.contains("config_drive"), "{e}");
        let e = parse(json!(42)).unwrap_err();
        assert!(e.contains("a number"), "{e}");
        let e = parse(json!({"url": "http://x/cd", "checksum": "sha256:00", "x": 1})).unwrap_err();
        assert!(e.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn image_and_fetch_forms() {
        assert_eq!(
            parse(json!("H4sIAAAA")).unwrap(),
            ConfigDrive::Image("H4sIAAAA".into())
        );
        let f = parse(json!({"url": "http://127.0.0.1/cd.img", "checksum": "sha256:ab"})).unwrap();
        assert_eq!(
            f,
            ConfigDrive::Fetch {
                url: "http://127.0.0.1/cd.img".into(),
                checksum: "sha256:ab".into(),
                ca_pem: None,
            }
        );
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"url": "http://127.0.0.1/cd.img", "checksum": "sha256:ab"})
        );
        let e = parse(json!("https://example.invalid/cd.img")).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        assert!(parse(json!({"url": "http://x"})).is_err());
        assert!(parse(json!({"url": "", "checksum": "sha256:00"})).is_err());
        let pem = "-----BEGIN CERTIFICATE-----\n...";
        let f = parse(
            json!({"url": "https://127.0.0.1/cd.img", "checksum": "sha256:ab",
            "ca_pem": pem}),
        )
        .unwrap();
        assert!(matches!(f, ConfigDrive::Fetch { ca_pem: Some(p), .. } if p == pem));
        let e = parse(
            json!({"url": "https://127.0.0.1/cd.img", "checksum": "sha256:ab",
            "ca_pem": "x".repeat(crate::image::MAX_CA_PEM + 1)}),
        )
        .unwrap_err();
        assert!(
            e.contains("config_drive ca_pem: longer than 65536 bytes"),
            "{e}"
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let big = "x".repeat(MAX_CONTENTS_BYTES);
        let e = parse(json!({"meta_data": {"k": big}})).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let e = parse(json!("A".repeat(MAX_IMAGE_BASE64_BYTES + 1))).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn format_names() {
        assert_eq!(ConfigDriveFormat::default(), ConfigDriveFormat::Vfat);
        assert_eq!(
            serde_json::to_value(ConfigDriveFormat::Iso9660).unwrap(),
            json!("iso9660")
        );
        assert_eq!(
            "vfat".parse::<ConfigDriveFormat>(),
            Ok(ConfigDriveFormat::Vfat)
        );
        assert!("fat32".parse::<ConfigDriveFormat>().is_err());
        let o: ConfigDriveOutcome = serde_json::from_value(json!({"partition_number": 2,
            "start_bytes": 1, "size_bytes": 2, "format": "vfat", "reused": false, "new": 1}))
        .unwrap();
        assert_eq!(o.partition_number, 2);
    }
}
