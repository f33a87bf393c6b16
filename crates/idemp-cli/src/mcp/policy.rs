//! The policy per tool: learned from the annotations of `tools/list`, overridden by
//! the configuration.
//!
//! | annotations (MCP hints) | policy |
//! |---|---|
//! | `readOnlyHint: true` | [`Policy::Pass`], or [`Policy::Cache`] with `--cache-reads TTL` |
//! | `idempotentHint: true` (not read-only) | [`Policy::Pass`] |
//! | anything else (the spec's defaults: destructive, not idempotent) | [`Policy::Guard`] |
//! | a tool not seen in `tools/list` yet | [`Policy::Guard`] |
//!
//! Annotations are hints a server gives about itself, so `[tools.NAME] policy = …` in
//! the config file wins over them.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What the proxy does with a `tools/call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// At most once per key: claim, forward, store the result, replay it.
    Guard,
    /// Forward untouched.
    Pass,
    /// Answer from the read cache, or forward and cache the result.
    Cache,
}

impl Policy {
    /// The name used in metrics, logs and the config.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Guard => "guard",
            Policy::Pass => "pass",
            Policy::Cache => "cache",
        }
    }

    /// The policy the MCP annotations ask for.
    pub fn from_hints(read_only: bool, idempotent: bool, cache_reads: bool) -> Self {
        match (read_only, idempotent) {
            (true, _) if cache_reads => Policy::Cache,
            (true, _) | (false, true) => Policy::Pass,
            (false, false) => Policy::Guard,
        }
    }
}

/// What `tools/list` said about one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints {
    /// `readOnlyHint` (default false).
    pub read_only: bool,
    /// `idempotentHint` (default false).
    pub idempotent: bool,
    /// `destructiveHint` (default true): reported, not used to decide.
    pub destructive: bool,
}

#[derive(Deserialize)]
struct ListResult<'a> {
    #[serde(borrow)]
    tools: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolEntry {
    name: String,
    #[serde(default)]
    annotations: Option<Annotations>,
}

#[derive(Deserialize, Default)]
struct Annotations {
    #[serde(default, rename = "readOnlyHint")]
    read_only: Option<bool>,
    #[serde(default, rename = "destructiveHint")]
    destructive: Option<bool>,
    #[serde(default, rename = "idempotentHint")]
    idempotent: Option<bool>,
}

/// Reads the tools of a `tools/list` result. Tools whose entry cannot be read (no
/// name, hints that are not booleans) are skipped: they stay guarded.
pub fn parse_tools_list(result: &RawValue) -> Vec<(String, Hints)> {
    let Ok(list) = serde_json::from_str::<ListResult<'_>>(result.get()) else {
        return Vec::new();
    };
    list.tools
        .into_iter()
        .filter_map(|raw| serde_json::from_str::<ToolEntry>(raw.get()).ok())
        .map(|t| {
            let a = t.annotations.unwrap_or_default();
            let hints = Hints {
                read_only: a.read_only.unwrap_or(false),
                idempotent: a.idempotent.unwrap_or(false),
                destructive: a.destructive.unwrap_or(true),
            };
            (t.name, hints)
        })
        .collect()
}

/// The policy of every tool: configured overrides, then what `tools/list` said.
#[derive(Debug, Default)]
pub struct ToolTable {
    overrides: HashMap<String, Policy>,
    learned: RwLock<HashMap<String, Hints>>,
    cache_reads: bool,
}

impl ToolTable {
    /// A table with the configured overrides; `cache_reads` turns read-only tools
    /// into [`Policy::Cache`].
    pub fn new(overrides: HashMap<String, Policy>, cache_reads: bool) -> Self {
        Self {
            overrides,
            learned: RwLock::default(),
            cache_reads,
        }
    }

    /// Records the tools of one `tools/list` page (a later list replaces a tool's
    /// hints; tools that disappear keep their last hints).
    pub fn learn(&self, tools: Vec<(String, Hints)>) {
        if tools.is_empty() {
            return;
        }
        if let Ok(mut learned) = self.learned.write() {
            for (name, hints) in tools {
                tracing::debug!(tool = %name, ?hints, policy = self.policy_of(hints).name(), "learned");
                learned.insert(name, hints);
            }
        }
    }

    fn policy_of(&self, h: Hints) -> Policy {
        Policy::from_hints(h.read_only, h.idempotent, self.cache_reads)
    }

    /// The policy of `tool`.
    pub fn policy(&self, tool: &str) -> Policy {
        if let Some(p) = self.overrides.get(tool) {
            return *p;
        }
        self.learned
            .read()
            .ok()
            .and_then(|l| l.get(tool).copied())
            .map_or(Policy::Guard, |h| self.policy_of(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn the_policy_table() {
        let list = raw(r#"{"tools":[
            {"name":"read","annotations":{"readOnlyHint":true}},
            {"name":"put","annotations":{"idempotentHint":true,"destructiveHint":true}},
            {"name":"send","annotations":{"destructiveHint":false}},
            {"name":"plain","inputSchema":{"type":"object"}},
            {"name":"weird","annotations":{"readOnlyHint":"yes"}},
            {"nameless":1}
        ],"nextCursor":"c"}"#);
        let tools = parse_tools_list(&list);
        assert_eq!(tools.len(), 4);
        let mut overrides = HashMap::new();
        overrides.insert("plain".to_string(), Policy::Pass);
        for (cache_reads, read_policy) in [(false, Policy::Pass), (true, Policy::Cache)] {
            let t = ToolTable::new(overrides.clone(), cache_reads);
            assert_eq!(t.policy("read"), Policy::Guard, "unseen tools are guarded");
            t.learn(tools.clone());
            assert_eq!(t.policy("read"), read_policy);
            assert_eq!(t.policy("put"), Policy::Pass);
            assert_eq!(t.policy("send"), Policy::Guard);
            assert_eq!(t.policy("plain"), Policy::Pass, "the config overrides");
            assert_eq!(
                t.policy("weird"),
                Policy::Guard,
                "unreadable hints stay guarded"
            );
            assert_eq!(t.policy("unknown"), Policy::Guard);
        }
        assert!(parse_tools_list(&raw("[]")).is_empty());
    }
}
