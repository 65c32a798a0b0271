//! Validation: [`RawConfig`] into [`Config`], reporting every problem at once with its path
//! (`instances[1].endpoint: …`) so that an operator fixes a file in one round.
//!
//! One file per section of the file: [`server`] (`[server]`, `[meter]`, `[kafka]`), [`instances`], [`routes`],
//! [`consumers`], [`limits`] (`[[token_limits]]`, `[quota]`), [`spool`] and [`admin`]. Each section reads its raw
//! table and what earlier sections resolved (instance names for routes, model names for limits and keys), pushes
//! its problems, and returns its part of [`Config`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use url::Url;

use super::model::*;
use super::one_line;
use super::raw::RawConfig;

mod admin;
mod consumers;
mod instances;
mod limits;
mod routes;
mod server;
mod spool;
mod teams;

pub(super) const LIMIT_ID_ONLY_GLOBAL: &str =
    "only [[token_limits]] entries have an id; a consumer's or an instance's limit is named by its owner";

/// Collects problems while validating.
pub(super) struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(one_line(&format!("{path}: {message}")));
    }

    fn duration(&mut self, path: impl fmt::Display, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(path, "must be longer than zero");
                Duration::ZERO
            }
            Err(e) => {
                self.push(
                    path,
                    format!("`{value}` is not a duration like \"250ms\" or \"1h\": {e}"),
                );
                Duration::ZERO
            }
        }
    }

    fn name(&mut self, path: impl fmt::Display, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
        if !ok {
            self.push(
                path,
                format!("`{value}` must be 1–128 characters of [A-Za-z0-9-_.:/]"),
            );
        }
    }
}

impl RawConfig {
    pub(super) fn validate(self, env: &impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let source = std::sync::Arc::new(self.clone());
        let mut p = Problems(Vec::new());
        // Stands in for an invalid URL so validation can go on; never reaches a valid `Config`.
        let placeholder =
            Url::parse("http://invalid.invalid/").map_err(|e| ConfigErrors(vec![e.to_string()]))?;

        let server = server::server(&mut p, self.server);
        let meter = server::meter(&mut p, self.meter, &placeholder);
        let billing = server::billing(&mut p, self.billing, &placeholder);
        let kafka = server::kafka(&mut p, self.kafka);
        let known = instances::instances(&mut p, self.instances, env, &placeholder);
        let routes::Routes {
            list: routes,
            model_owner,
        } = routes::routes(&mut p, self.routes, &known);
        let instances::Instances {
            list: mut instances,
            index: instance_index,
            secrets,
            limits: instance_limits,
        } = known;

        let route_names: HashMap<&str, &[String]> = routes
            .iter()
            .map(|route| (route.name.as_str(), route.models.as_slice()))
            .collect();
        let aliases = limits::Aliases {
            owner: &model_owner,
            names: &route_names,
        };
        let mut limits = limits::LimitRules {
            models: &model_owner,
            aliases: &aliases,
            instances: &instance_index,
            keys: HashSet::new(),
        };
        limits::instance_limits(&mut p, &mut limits, instance_limits, &mut instances);

        let teams = teams::teams(&mut p, self.teams, &mut limits);
        let consumers::Consumers {
            list: consumers,
            key_hashes,
        } = consumers::consumers(&mut p, self.consumers, &mut limits, &teams);
        let token_limits = limits::token_limits(&mut p, self.token_limits, &mut limits);
        let quota = limits::quota(&mut p, self.quota);

        let prices = server::prices(&mut p, billing.prices.as_deref());
        let limited = !token_limits.is_empty()
            || consumers.iter().any(|c: &Consumer| !c.token_limits.is_empty())
            || teams.list.iter().any(|t| !t.budgets.is_empty())
            || instances.iter().any(|i| i.token_limit.is_some());
        if !server.metering && limited {
            p.push(
                "server.metering",
                "token limits are counted from metered usage: remove them, or leave metering on",
            );
        }
        let spool = spool::spool(&mut p, self.spool, kafka.message_timeout);
        let admin = admin::admin(&mut p, self.admin, &key_hashes, &source.instances);

        if p.0.is_empty() {
            Ok(Config {
                server,
                meter,
                billing,
                kafka,
                instances,
                routes,
                teams: teams.list,
                consumers,
                token_limits,
                quota,
                prices,
                spool,
                admin,
                source,
                secrets,
            })
        } else {
            Err(ConfigErrors(p.0))
        }
    }
}

pub(super) fn http_url(p: &mut Problems, path: impl fmt::Display, value: &str, placeholder: &Url) -> Url {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Ok(_) => {
            p.push(path, format!("`{value}` must be an http:// or https:// URL"));
            placeholder.clone()
        }
        Err(e) => {
            p.push(path, format!("`{value}` is not a URL: {e}"));
            placeholder.clone()
        }
    }
}
