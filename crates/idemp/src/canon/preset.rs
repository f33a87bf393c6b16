//! The drop-key presets of llm-message-hash-py 0.1.0 (`HashOpts.for_anthropic()`…).

use std::fmt;
use std::str::FromStr;

/// A provider preset: a set of keys dropped at any depth before hashing, identical to
/// the `HashOpts.for_*()` class methods of llm-message-hash-py 0.1.0.
///
/// ```
/// use idemp::canon::Preset;
/// assert_eq!(Preset::Anthropic.keys(), &["cache_control", "id", "usage", "stop_reason", "stop_sequence"]);
/// assert_eq!("openai".parse::<Preset>().unwrap(), Preset::OpenAi);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// `cache_control`, `id`, `usage`, `stop_reason`, `stop_sequence`.
    Anthropic,
    /// `created`, `id`, `object`, `system_fingerprint`, `usage`, `finish_reason`.
    OpenAi,
    /// `cache_control`, `usage`, `stopReason`, `metrics`.
    Bedrock,
    /// `usageMetadata`, `safetyRatings`, `finishReason`.
    Gemini,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [
        Preset::Anthropic,
        Preset::OpenAi,
        Preset::Bedrock,
        Preset::Gemini,
    ];

    /// The keys this preset drops.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Preset::Anthropic => &[
                "cache_control",
                "id",
                "usage",
                "stop_reason",
                "stop_sequence",
            ],
            Preset::OpenAi => &[
                "created",
                "id",
                "object",
                "system_fingerprint",
                "usage",
                "finish_reason",
            ],
            Preset::Bedrock => &["cache_control", "usage", "stopReason", "metrics"],
            Preset::Gemini => &["usageMetadata", "safetyRatings", "finishReason"],
        }
    }

    /// The lowercase name used on the command line and in [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Preset::Anthropic => "anthropic",
            Preset::OpenAi => "openai",
            Preset::Bedrock => "bedrock",
            Preset::Gemini => "gemini",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A preset name that is not one of `anthropic`, `openai`, `bedrock`, `gemini`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown preset {0:?} (expected anthropic, openai, bedrock or gemini)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}
