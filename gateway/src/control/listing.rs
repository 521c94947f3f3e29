//! What `gateway cache ls` and `gateway cache du` show.

use std::collections::HashMap;

use indicatif::HumanBytes;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::cache::{Cache, Digest, Owner};

pub async fn listing(cache: &Cache) -> anyhow::Result<Value> {
    let refs = cache.list_refs().await?;
    let naming = cache.naming().await?;
    let stats = cache.stats();
    let pins: Vec<Value> = cache
        .list_pins()
        .into_iter()
        .map(|(name, digests)| json!({ "name": name, "blobs": digests.len() }))
        .collect();
    let refs: Vec<Value> = refs
        .into_iter()
        .map(|(site, repo, key, e)| {
            json!({
                "site": site, "repository": repo, "reference": key,
                "digest": e.digest, "media_type": e.media_type, "size": e.size,
                "fetched_at": e.fetched_at,
            })
        })
        .collect();
    let mut owners: HashMap<Digest, Vec<&Owner>> = HashMap::new();
    for n in &naming {
        for d in &n.digests {
            owners.entry(*d).or_default().push(&n.owner);
        }
    }
    let blob_list: Vec<Value> = cache
        .blob_list()
        .into_iter()
        .map(|b| {
            let named = owners.get(&b.digest).map(Vec::as_slice).unwrap_or_default();
            let pinned_by: Vec<&str> = named
                .iter()
                .filter_map(|o| match o {
                    Owner::Pin { name } => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            let referenced_by: Vec<String> = named.iter().map(|o| o.label()).collect();
            json!({
                "digest": b.digest.to_string(),
                "size": b.size,
                "last_used": rfc3339(b.last_used_ms),
                "last_used_ms": b.last_used_ms,
                "pinned_by": pinned_by,
                "referenced_by": referenced_by,
            })
        })
        .collect();
    Ok(json!({
        "blobs": stats.blobs,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "pinned_blobs": stats.pinned_blobs,
        "fills_in_progress": stats.fills_in_progress,
        "references": refs,
        "pins": pins,
        "blob_list": blob_list,
    }))
}

fn rfc3339(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub fn render(v: &Value) -> String {
    let mut out = format!(
        "{} blobs, {} of {} bytes, {} pinned\n",
        v["blobs"], v["bytes"], v["max_bytes"], v["pinned_blobs"]
    );
    for r in v["references"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}/{} {} -> {} ({} bytes)\n",
            r["site"].as_str().unwrap_or("?"),
            r["repository"].as_str().unwrap_or("?"),
            r["reference"].as_str().unwrap_or("?"),
            r["digest"].as_str().unwrap_or("?"),
            r["size"],
        ));
    }
    for p in v["pins"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "pinned {} ({} blobs)\n",
            p["name"].as_str().unwrap_or("?"),
            p["blobs"]
        ));
    }
    for b in v["blob_list"].as_array().into_iter().flatten() {
        let strings = |key: &str| -> Vec<String> {
            b[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let pinned = strings("pinned_by");
        let names = strings("referenced_by");
        out.push_str(&format!(
            "blob {} {} bytes, last used {}, {}, {}\n",
            b["digest"].as_str().unwrap_or("?"),
            b["size"],
            b["last_used"].as_str().unwrap_or("?"),
            if pinned.is_empty() {
                "not pinned".to_owned()
            } else {
                format!("pinned by {}", pinned.join(", "))
            },
            if names.is_empty() {
                "referenced by nothing".to_owned()
            } else {
                format!("referenced by {}", names.join(", "))
            },
        ));
    }
    out
}

/// `cache du` as text.
pub fn render_usage(v: &Value) -> String {
    let amount = |a: &Value| {
        let bytes = a["bytes"].as_u64().unwrap_or(0);
        format!(
            "{bytes} bytes ({}) in {} blobs",
            HumanBytes(bytes),
            a["blobs"]
        )
    };
    let mut out = String::new();
    for site in v["sites"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}: {}\n",
            site["site"].as_str().unwrap_or("?"),
            amount(&site["total"])
        ));
        for repo in site["repositories"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {}: {}\n",
                repo["repository"].as_str().unwrap_or("?"),
                amount(&repo["total"])
            ));
        }
        if site["objects"]["blobs"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "  (files and charts): {}\n",
                amount(&site["objects"])
            ));
        }
    }
    out.push_str(&format!("pinned: {}\n", amount(&v["pinned"])));
    out.push_str(&format!(
        "referenced by nothing: {}\n",
        amount(&v["unreferenced"])
    ));
    out.push_str(&format!("total: {}\n", amount(&v["total"])));
    out.push_str(&format!("({})\n", v["note"].as_str().unwrap_or("")));
    out
}
