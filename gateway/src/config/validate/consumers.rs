//! `[[consumers]]`: API keys (hashes, expiry, allowed models), request-count limits and per-consumer token limits.

use std::collections::HashSet;

use tollgate_schemas::budget::BudgetHolder;

use super::{LIMIT_ID_ONLY_GLOBAL, Problems};
use crate::config::model::*;
use crate::config::raw::*;

use super::limits::LimitRules;
use super::teams::Teams;

/// The consumers, and the hashes of all their keys (an admin key must not be one of them).
pub(super) struct Consumers {
    pub list: Vec<Consumer>,
    pub key_hashes: HashSet<[u8; 32]>,
}

pub(super) fn consumers(
    p: &mut Problems,
    raw_consumers: Vec<RawConsumer>,
    limits: &mut LimitRules<'_>,
    teams: &Teams,
) -> Consumers {
    let model_owner = limits.models;
    let aliases = limits.aliases;
    let mut consumer_names = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut key_hashes = HashSet::new();
    let mut consumers = Vec::with_capacity(raw_consumers.len());
    for (i, raw) in raw_consumers.into_iter().enumerate() {
        let path = format!("consumers[{i}]");
        p.name(format!("{path}.name"), &raw.name);
        if !consumer_names.insert(raw.name.clone()) {
            p.push(format!("{path}.name"), format!("`{}` is defined twice", raw.name));
        }
        if raw.keys.is_empty() {
            p.push(format!("{path}.keys"), "must list at least one key");
        }
        let mut keys = Vec::with_capacity(raw.keys.len());
        for (j, key) in raw.keys.into_iter().enumerate() {
            let kpath = format!("{path}.keys[{j}]");
            p.name(format!("{kpath}.id"), &key.id);
            if !key_ids.insert(key.id.clone()) {
                p.push(format!("{kpath}.id"), format!("`{}` is used twice", key.id));
            }
            let mut sha256 = [0u8; 32];
            if hex::decode_to_slice(key.sha256.to_ascii_lowercase(), &mut sha256).is_err() {
                p.push(
                    format!("{kpath}.sha256"),
                    "must be the 64-hex-digit SHA-256 of the key (`gateway hash-key` prints it)",
                );
            } else if !key_hashes.insert(sha256) {
                p.push(format!("{kpath}.sha256"), "the same key is configured twice");
            }
            let expires_at =
                key.expires_at
                    .as_deref()
                    .and_then(|at| match chrono::DateTime::parse_from_rfc3339(at) {
                        Ok(at) => Some(at.to_utc()),
                        Err(e) => {
                            p.push(
                                format!("{kpath}.expires_at"),
                                format!("`{at}` is not an RFC 3339 time: {e}"),
                            );
                            None
                        }
                    });
            for (m, model) in key.models.iter().flatten().enumerate() {
                if !model_owner.contains_key(model) {
                    p.push(
                        format!("{kpath}.models[{m}]"),
                        format!("no route serves `{model}`"),
                    );
                }
            }
            if let Some(models) = &key.models {
                aliases.check(p, &format!("{kpath}.models"), models);
            }
            keys.push(ConsumerKey {
                id: key.id,
                sha256,
                expires_at,
                models: key.models,
            });
        }
        let limit_count = raw.limit_count.map(|l| {
            let lpath = format!("{path}.limit_count");
            if l.count == 0 {
                p.push(format!("{lpath}.count"), "must be at least 1");
            }
            if !(400..=599).contains(&l.rejected_code) {
                p.push(
                    format!("{lpath}.rejected_code"),
                    format!("{} is not an error status", l.rejected_code),
                );
            }
            let time_window = p.duration(format!("{lpath}.time_window"), &l.time_window);
            if time_window > tollgate_schemas::quota::MAX_WINDOW {
                p.push(format!("{lpath}.time_window"), "must be at most 366d");
            }
            LimitCount {
                count: l.count,
                time_window,
                rejected_code: l.rejected_code,
                rejected_msg: l.rejected_msg,
            }
        });
        for (j, limit) in raw.token_limits.iter().enumerate() {
            if limit.id.is_some() {
                p.push(format!("{path}.token_limits[{j}].id"), LIMIT_ID_ONLY_GLOBAL);
            }
        }
        let mut token_limits: Vec<TokenLimit> = raw
            .token_limits
            .into_iter()
            .enumerate()
            .filter_map(|(j, limit)| {
                limits.validate(
                    p,
                    &format!("{path}.token_limits[{j}]"),
                    Some(&raw.name),
                    None,
                    limit,
                )
            })
            .collect();
        token_limits.extend(raw.budgets.into_iter().enumerate().filter_map(|(j, budget)| {
            limits.budget(
                p,
                &format!("{path}.budgets[{j}]"),
                BudgetHolder::Consumer(&raw.name),
                budget,
            )
        }));
        let class = raw.class.unwrap_or_else(|| "default".to_owned());
        p.name(format!("{path}.class"), &class);
        let team = teams.place(p, &format!("{path}.team"), raw.team.as_deref());
        consumers.push(Consumer {
            class,
            team,
            name: raw.name,
            keys,
            limit_count,
            token_limits,
        });
    }
    Consumers {
        list: consumers,
        key_hashes,
    }
}
