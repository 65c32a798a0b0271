//! `[[teams]]`: groups of consumers, organisation → team → consumer. A team names its `parent` (another team)
//! or none (then it is an organisation); a consumer names its `team`. Names are checked like the others', a
//! parent must exist and a chain of parents must not come back on itself; each consumer's place — its team and
//! the organisation at the top of the chain — is resolved here once, for the usage events to carry.

use std::collections::{HashMap, HashSet};

use tollgate_schemas::budget::BudgetHolder;

use super::Problems;
use super::limits::LimitRules;
use crate::config::model::{Team, TeamPath};
use crate::config::raw::RawTeam;

/// The most parents a chain of teams may have above a consumer's team: organisation → division → team is two.
pub const MAX_TEAM_DEPTH: usize = 8;

/// The teams, validated, and the way from any team to its organisation.
pub(super) struct Teams {
    pub list: Vec<Team>,
    /// Team name → its organisation (the top of its chain), for every team whose chain is valid.
    organization: HashMap<String, String>,
}

impl Teams {
    /// The place of a consumer at `path` that names `team` (if it names one); a problem when the team does not
    /// exist.
    pub fn place(&self, p: &mut Problems, path: &str, team: Option<&str>) -> Option<TeamPath> {
        let team = team?;
        match self.organization.get(team) {
            Some(organization) => Some(TeamPath {
                team: team.to_owned(),
                organization: organization.clone(),
            }),
            None => {
                if !self.list.iter().any(|t| t.name == team) {
                    p.push(path, format!("no team is named `{team}`"));
                }
                None
            }
        }
    }
}

/// The teams of `raw`, with their budgets (checked against `limits`' scopes). A budget counts the usage events
/// that name its team as their `team` or their `organization`, so it may be set on an organisation or on a team
/// without teams under it — not on a team in the middle of a chain, whose consumers' events name neither.
pub(super) fn teams(p: &mut Problems, raw: Vec<RawTeam>, limits: &mut LimitRules<'_>) -> Teams {
    let mut names = HashSet::new();
    for (i, team) in raw.iter().enumerate() {
        p.name(format!("teams[{i}].name"), &team.name);
        if !names.insert(team.name.as_str()) {
            p.push(
                format!("teams[{i}].name"),
                format!("`{}` is defined twice", team.name),
            );
        }
    }
    let parents: HashMap<&str, Option<&str>> = raw
        .iter()
        .map(|t| (t.name.as_str(), t.parent.as_deref()))
        .collect();
    let mut organization = HashMap::new();
    for (i, team) in raw.iter().enumerate() {
        let path = format!("teams[{i}].parent");
        if let Some(parent) = team.parent.as_deref()
            && !parents.contains_key(parent)
        {
            p.push(&path, format!("no team is named `{parent}`"));
            continue;
        }
        let mut chain = vec![team.name.as_str()];
        let mut at = team.name.as_str();
        let mut next = team.parent.as_deref();
        let top = loop {
            match next {
                None => break Some(at),
                // Reported at that team's own entry.
                Some(parent) if !parents.contains_key(parent) => break None,
                Some(parent) if chain.contains(&parent) => {
                    p.push(
                        &path,
                        format!(
                            "the chain of parents comes back to itself: {} → {parent}",
                            chain.join(" → ")
                        ),
                    );
                    break None;
                }
                Some(_) if chain.len() > MAX_TEAM_DEPTH => {
                    p.push(
                        &path,
                        format!("more than {MAX_TEAM_DEPTH} parents above `{}`", team.name),
                    );
                    break None;
                }
                Some(parent) => {
                    chain.push(parent);
                    at = parent;
                    next = parents.get(at).copied().flatten();
                }
            }
        };
        if let Some(top) = top {
            organization.insert(team.name.clone(), top.to_owned());
        }
    }
    let has_teams_under: HashSet<&str> = raw.iter().filter_map(|t| t.parent.as_deref()).collect();
    let middle: HashSet<String> = raw
        .iter()
        .filter(|t| t.parent.is_some() && has_teams_under.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    let list = raw
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if middle.contains(&t.name) && !t.budgets.is_empty() {
                p.push(
                    format!("teams[{i}].budgets"),
                    format!(
                        "`{}` has a parent and teams under it: set the budget on the organisation or on the teams \
                         its consumers belong to (usage events name a consumer's team and organisation only)",
                        t.name
                    ),
                );
            }
            let budgets = t
                .budgets
                .into_iter()
                .enumerate()
                .filter_map(|(j, budget)| {
                    limits.budget(
                        p,
                        &format!("teams[{i}].budgets[{j}]"),
                        BudgetHolder::Team(&t.name),
                        budget,
                    )
                })
                .collect();
            Team {
                name: t.name,
                parent: t.parent,
                budgets,
            }
        })
        .collect();
    Teams { list, organization }
}
