//! What `gateway cache ls` shows.

use serde_json::{Value, json};

use crate::cache::Cache;

pub async fn listing(cache: &Cache) -> anyhow::Result<Value> {
    let refs = cache.list_refs().await?;
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
    Ok(json!({
        "blobs": stats.blobs,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "pinned_blobs": stats.pinned_blobs,
        "fills_in_progress": stats.fills_in_progress,
        "references": refs,
        "pins": pins,
    }))
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
    out
}
