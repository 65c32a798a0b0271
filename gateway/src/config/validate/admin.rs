//! `[admin]`: the admin API's listener, keys, allowlist and the egress rules for instances it creates.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::Problems;
use crate::config::model::*;
use crate::config::raw::*;

/// `consumer_hashes`: an admin key must not also be a consumer key.
pub(super) fn admin(
    p: &mut Problems,
    raw: RawAdmin,
    consumer_hashes: &HashSet<[u8; 32]>,
    instances: &[RawInstance],
) -> AdminConfig {
    let egress = Egress::of_file(&raw, instances);
    let listen = raw.listen.parse().unwrap_or_else(|e| {
        p.push(
            "admin.listen",
            format!("`{}` is not an address like 127.0.0.1:9180: {e}", raw.listen),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    let mut keys = Vec::with_capacity(raw.keys.len());
    for (i, key) in raw.keys.into_iter().enumerate() {
        let path = format!("admin.keys[{i}]");
        p.name(format!("{path}.id"), &key.id);
        if !ids.insert(key.id.clone()) {
            p.push(format!("{path}.id"), format!("`{}` is used twice", key.id));
        }
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(key.sha256.to_ascii_lowercase(), &mut sha256).is_err() {
            p.push(
                format!("{path}.sha256"),
                "must be the 64-hex-digit SHA-256 of the key (`gateway hash-key` prints it)",
            );
        } else if !hashes.insert(sha256) {
            p.push(format!("{path}.sha256"), "the same key is configured twice");
        } else if consumer_hashes.contains(&sha256) {
            p.push(
                format!("{path}.sha256"),
                "is also a consumer key; use a key of its own",
            );
        }
        let role = match key.role.as_str() {
            "admin" => AdminRole::Admin,
            "viewer" => AdminRole::Viewer,
            other => {
                p.push(
                    format!("{path}.role"),
                    format!("`{other}` is not admin or viewer"),
                );
                AdminRole::Viewer
            }
        };
        keys.push(AdminKey {
            id: key.id,
            sha256,
            role,
        });
    }
    let allow = cidrs(p, "admin.allow", &raw.allow);
    if raw.allow.is_empty() {
        p.push(
            "admin.allow",
            "must list at least one CIDR (default: loopback only)",
        );
    }
    for (i, net) in raw.allow.iter().enumerate() {
        if let Ok(net) = net.parse::<IpNet>()
            && net.prefix_len() == 0
            && !raw.allow_any
        {
            p.push(
                format!("admin.allow[{i}]"),
                format!("`{net}` admits every address; set admin.allow_any = true to mean it"),
            );
        }
    }
    for (i, net) in raw.trusted_proxies.iter().enumerate() {
        if let Ok(net) = net.parse::<IpNet>()
            && net.prefix_len() == 0
        {
            p.push(
                format!("admin.trusted_proxies[{i}]"),
                format!(
                    "`{net}` would trust every peer's X-Forwarded-For, so any client could claim an allowed \
                     address; list the proxies' own addresses"
                ),
            );
        }
    }
    if raw.config_topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.push(
            "admin.config_topic",
            "must name a topic (leave it out to run standalone)",
        );
    }
    let config_load_timeout = p.duration("admin.config_load_timeout", &raw.config_load_timeout);
    if config_load_timeout > Duration::from_secs(600) {
        p.push("admin.config_load_timeout", "must be at most 10m");
    }
    for (i, var) in raw.provider_key_envs.iter().enumerate() {
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            p.push(
                format!("admin.provider_key_envs[{i}]"),
                format!("`{var}` is not an environment variable name"),
            );
        }
    }
    if raw
        .provider_key_env_prefix
        .as_deref()
        .is_some_and(|prefix| prefix.len() < 4)
    {
        p.push(
            "admin.provider_key_env_prefix",
            "must be at least 4 characters (a short prefix such as `C` would allow CLICKHOUSE_PASSWORD)",
        );
    }
    for (i, net) in cidrs(p, "admin.private_endpoints", &raw.private_endpoints)
        .iter()
        .enumerate()
    {
        if net.prefix_len() == 0 {
            p.push(
                format!("admin.private_endpoints[{i}]"),
                format!("`{net}` allows every address; list the internal ranges providers run on"),
            );
        }
    }
    AdminConfig {
        config_topic: raw.config_topic,
        config_load_timeout,
        egress,
        listen,
        keys,
        allow,
        trusted_proxies: cidrs(p, "admin.trusted_proxies", &raw.trusted_proxies),
    }
}

fn cidrs(p: &mut Problems, path: &str, values: &[String]) -> Vec<IpNet> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| match value.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                p.push(
                    format!("{path}[{i}]"),
                    format!("`{value}` has host bits set; did you mean {}?", net.trunc()),
                );
                None
            }
            Err(e) => {
                p.push(
                    format!("{path}[{i}]"),
                    format!("`{value}` is not a CIDR like 10.0.0.0/8 or ::1/128: {e}"),
                );
                None
            }
        })
        .collect()
}
