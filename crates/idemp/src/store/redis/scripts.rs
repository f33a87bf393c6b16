//! The Lua scripts (one `EVALSHA` per operation) and how they are called.

use super::*;

pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) settle: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) purge: Script,
    pub(super) get: Script,
}

pub(super) const PRELUDE: &str = include_str!("lua/prelude.lua");

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
    Scripts {
        claim: s(include_str!("lua/claim.lua")),
        settle: s(include_str!("lua/settle.lua")),
        release: s(include_str!("lua/release.lua")),
        renew: s(include_str!("lua/renew.lua")),
        purge: s(include_str!("lua/purge.lua")),
        get: s(include_str!("lua/get.lua")),
    }
});

/// `EVALSHA <script> 1 <key>`; the caller appends the arguments.
pub(super) fn evalsha(script: &Script, key: &[u8]) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key);
    cmd
}
