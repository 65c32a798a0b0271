//! Model routing: which instances may serve a request, in which order. Built once from the configuration into
//! an immutable table keyed by model name (and alias), so a lookup is one hash probe on the request path.
//!
//! Today a route's targets are tried in order of `priority` (higher first), in file order within a priority;
//! the next target is tried only when the previous one failed in a way that is safe to retry (see `upstream`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Instance};

/// The instances that may serve one route, in the order they are tried.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    pub targets: Vec<Arc<Instance>>,
}

/// All routes by model name.
#[derive(Debug, Default)]
pub struct Router {
    by_model: HashMap<String, Arc<RouteTable>>,
    models: Vec<String>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let instances: Vec<Arc<Instance>> = config.instances.iter().cloned().map(Arc::new).collect();
        let mut by_model = HashMap::new();
        let mut models = Vec::new();
        for route in &config.routes {
            let table = Arc::new(RouteTable {
                name: Arc::from(route.name.as_str()),
                targets: route
                    .targets
                    .iter()
                    .filter_map(|t| instances.get(t.instance).cloned())
                    .collect(),
            });
            for model in &route.models {
                by_model.insert(model.clone(), table.clone());
                models.push(model.clone());
            }
        }
        models.sort_unstable();
        Self { by_model, models }
    }

    /// The route serving `model`, if any.
    pub fn route(&self, model: &str) -> Option<&Arc<RouteTable>> {
        self.by_model.get(model)
    }

    /// Every model name a client may ask for, sorted.
    pub fn models(&self) -> &[String] {
        &self.models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [meter]
        url = "http://127.0.0.1:8081"
        [kafka]
        brokers = "127.0.0.1:9092"
        [[instances]]
        name = "cloud"
        endpoint = "https://api.example.com/v1"
        [[instances]]
        name = "local"
        endpoint = "http://10.0.0.1:8000/v1"
        [[routes]]
        name = "chat"
        models = ["gpt-4o", "chat-default"]
        targets = [{ instance = "cloud" }, { instance = "local", priority = 10 }]
    "#;

    #[test]
    fn aliases_share_one_route_and_higher_priority_comes_first() {
        let router = Router::new(&Config::from_toml(CONFIG).unwrap());
        let a = router.route("gpt-4o").unwrap();
        let b = router.route("chat-default").unwrap();
        assert!(Arc::ptr_eq(a, b));
        let order: Vec<_> = a.targets.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(order, ["local", "cloud"]);
        assert_eq!(router.models(), ["chat-default", "gpt-4o"]);
    }

    #[test]
    fn unknown_models_have_no_route() {
        let router = Router::new(&Config::from_toml(CONFIG).unwrap());
        assert!(router.route("gpt-4").is_none());
        assert!(router.route("").is_none());
    }
}
