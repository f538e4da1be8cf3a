//! `POST /servers/{id}/qc`: the spec check on a stored inventory, and the malformed and
//! hostile bodies it must refuse with a clear error.

// Helpers outside #[test] fns: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use molar_protocol::Method;
use molar_protocol::catalogue::InventoryGet;
use molar_protocol::inventory::Inventory;
use molar_protocol::qc::{MAX_PATTERN_CHARS, template};
use reqwest::Method as Http;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[tokio::test]
async fn qc_on_the_stored_inventory_and_bad_bodies() {
    let c = controller().await;
    let answers = Arc::new(AtomicBool::new(false));
    let a = fake_agent_with(&c, 1, fake_handler_with(answers.clone())).await;
    let sid = a.welcome.server_id.clone();
    still_answers(&c, &sid).await;
    let auth = admin(&c);
    let path = format!("/servers/{sid}/qc");
    let post = |body: String| {
        let (c, path, auth) = (&c, path.clone(), auth.clone());
        async move { raw_api(c, Http::POST, &path, Some(&auth), Some(&body)).await }
    };

    // Nothing stored yet: a clear not-found.
    let (status, v) = post(json!({"spec": {"bmc": {"present": false}}}).to_string()).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["msg"]
            .as_str()
            .unwrap()
            .contains("no inventory is stored"),
        "{v}"
    );

    answers.store(true, Ordering::SeqCst);
    c.client
        .call(&sid, InventoryGet::NAME, json!({}), None)
        .await
        .unwrap();
    let inv: Inventory = serde_json::from_value(inventory_sample()).unwrap();

    let (status, v) = post(json!({"spec": template(&inv)}).to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["passed"], true, "{v}");

    let (status, v) =
        post(json!({"spec": {"disks": [{"count": 17}], "cpu": {"model": "AMD*"}}}).to_string())
            .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["passed"], false, "{v}");
    assert_eq!(v["failures"].as_array().unwrap().len(), 2, "{v}");

    let long = "x".repeat(MAX_PATTERN_CHARS + 1);
    let bad = [
        ("not json".to_owned(), "invalid_request", "not valid JSON"),
        ("[]".to_owned(), "invalid_params", "invalid length 0"),
        (
            json!({}).to_string(),
            "invalid_params",
            "missing field `spec`",
        ),
        (
            json!({"spec": {}, "x": 1}).to_string(),
            "invalid_params",
            "unknown field `x`",
        ),
        (
            json!({"spec": {}}).to_string(),
            "invalid_params",
            "the spec checks nothing",
        ),
        (
            json!({"spec": {"cpu": {"cores": "8"}}}).to_string(),
            "invalid_params",
            "invalid type",
        ),
        (
            json!({"spec": {"disks": [{"count": -1}]}}).to_string(),
            "invalid_params",
            "invalid value",
        ),
        (
            json!({"spec": {"gpus": {"model": long}}}).to_string(),
            "invalid_params",
            "pattern longer than",
        ),
    ];
    for (body, code, want) in bad {
        let (status, v) = post(body.clone()).await;
        assert!(status == 400, "{body}: {status} {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(
            v["error"]["msg"].as_str().unwrap().contains(want),
            "{body}: {v}"
        );
    }

    let body = json!({"spec": {"bmc": {"present": true}}}).to_string();
    let (status, _) = raw_api(&c, Http::POST, "/servers/nope/qc", Some(&auth), Some(&body)).await;
    assert_eq!(status, 404);
    let (status, _) = raw_api(&c, Http::POST, &path, None, Some(&body)).await;
    assert_eq!(status, 401);
}
