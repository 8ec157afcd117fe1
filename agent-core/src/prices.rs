//! The built-in price table: list prices of common OpenAI, Azure OpenAI, Anthropic and Gemini
//! models, dated, so that cost is counted without configuration.
//!
//! The data is `agent-core/data/prices.json`, compiled in: its `as_of` date and `source` say where
//! each number comes from. [`Budget::new`](crate::Budget::new) prices with it; a table of your own
//! overrides or extends it:
//!
//! ```
//! use agent_core::{PriceTable, Usage};
//!
//! let builtin = PriceTable::builtin();
//! assert!(builtin.get("gpt-4o-mini").is_some());
//! // Provider prefixes and dated snapshots find the model's row.
//! assert_eq!(builtin.get("openai/gpt-4o-mini-2024-07-18"), builtin.get("gpt-4o-mini"));
//!
//! // Override one price and add a model of your own.
//! let mine = PriceTable::builtin()
//!     .with("gpt-4o-mini", 0.10, 0.40)
//!     .with("local/llama3.2", 0.0, 0.0);
//! assert_eq!(mine.cost_usd("openai/gpt-4o-mini", Usage::new(1_000_000, 0)), 0.10);
//! assert_eq!(PriceTable::BUILTIN_AS_OF, "2025-11-30");
//! ```

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde::Deserialize;

use crate::budget::{Price, PriceTable};

/// The data file: `{ as_of, unit, source, note, models: { id: { input_per_million,
/// output_per_million } } }`.
const BUILTIN_JSON: &str = include_str!("../data/prices.json");

#[derive(Deserialize)]
struct PriceFile {
    models: HashMap<String, Price>,
}

/// Parsed once; every default budget shares it.
static BUILTIN: LazyLock<Arc<PriceTable>> = LazyLock::new(|| {
    // The file is compiled in and a unit test parses it, so this cannot fail in a released
    // build; an empty table (cost 0) is the safe reading if it ever did.
    let models = serde_json::from_str::<PriceFile>(BUILTIN_JSON)
        .map(|f| f.models)
        .unwrap_or_default();
    Arc::new(PriceTable::from_prices(models))
});

impl PriceTable {
    /// The date the built-in prices were taken from the providers' pricing pages.
    pub const BUILTIN_AS_OF: &'static str = "2025-11-30";

    /// The built-in table (see the [module docs](crate::prices)): list prices of common OpenAI,
    /// Azure OpenAI, Anthropic and Gemini models as of [`BUILTIN_AS_OF`](Self::BUILTIN_AS_OF).
    pub fn builtin() -> PriceTable {
        PriceTable::clone(&BUILTIN)
    }

    /// The built-in table, shared (what [`Budget::new`](crate::Budget::new) uses).
    pub(crate) fn builtin_shared() -> Arc<PriceTable> {
        BUILTIN.clone()
    }

    /// The built-in data file as shipped: its date, units, sources and prices, for display.
    pub fn builtin_source() -> &'static str {
        BUILTIN_JSON
    }
}

/// Where `model` is found in `prices`: its exact id first, then the name after the last `/` (the
/// provider prefix of `openai/gpt-4o`, `azure/gpt-4o`, `sim/gpt-4o`), then that name without a
/// `-latest` or date suffix (`claude-3-5-haiku-20241022`, `gpt-4o-mini-2024-07-18`).
pub(crate) fn lookup<'a>(prices: &'a HashMap<String, Price>, model: &str) -> Option<&'a Price> {
    if let Some(p) = prices.get(model) {
        return Some(p);
    }
    let bare = model.rsplit('/').next().unwrap_or(model);
    prices.get(bare).or_else(|| prices.get(undated(bare)))
}

/// `name` without a trailing `-latest`, `-YYYYMMDD` or `-YYYY-MM-DD`.
fn undated(name: &str) -> &str {
    if let Some(stem) = name.strip_suffix("-latest") {
        return stem;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((stem, date)) = name.rsplit_once('-')
        && date.len() == 8
        && digits(date)
    {
        return stem;
    }
    // -YYYY-MM-DD: three numeric parts of lengths 4, 2, 2.
    let mut parts = name.rsplitn(4, '-');
    if let (Some(d), Some(m), Some(y), Some(stem)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
        && d.len() == 2
        && m.len() == 2
        && y.len() == 4
        && digits(d)
        && digits(m)
        && digits(y)
    {
        return stem;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Usage;

    #[test]
    fn the_data_file_parses_and_is_dated() {
        let file: serde_json::Value = serde_json::from_str(BUILTIN_JSON).unwrap();
        assert_eq!(file["as_of"], PriceTable::BUILTIN_AS_OF);
        assert!(file["source"].as_array().is_some_and(|s| s.len() == 4));
        let parsed: PriceFile = serde_json::from_str(BUILTIN_JSON).unwrap();
        assert_eq!(parsed.models.len(), PriceTable::builtin().len());
        for family in ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"] {
            assert!(parsed.models.contains_key(family), "{family}");
        }
        for (id, p) in &parsed.models {
            assert!(
                p.input_per_million > 0.0 && p.output_per_million >= p.input_per_million,
                "{id}: {p:?}"
            );
        }
    }

    #[test]
    fn ids_find_their_model_through_prefixes_and_snapshots() {
        let t = PriceTable::new()
            .with("gpt-4o-mini", 0.15, 0.6)
            .with("claude-3-5-haiku", 0.8, 4.0);
        for id in [
            "gpt-4o-mini",
            "openai/gpt-4o-mini",
            "azure/gpt-4o-mini",
            "sim/gpt-4o-mini",
            "127.0.0.1:8080/gpt-4o-mini-2024-07-18",
        ] {
            assert_eq!(t.get(id).map(|p| p.input_per_million), Some(0.15), "{id}");
        }
        for id in [
            "anthropic/claude-3-5-haiku-20241022",
            "claude-3-5-haiku-latest",
        ] {
            assert_eq!(t.get(id).map(|p| p.input_per_million), Some(0.8), "{id}");
        }
        for id in [
            "gpt-4o",
            "openai/gpt-4o-mini-v2",
            "mini",
            "gpt-4o-mini/other",
        ] {
            assert!(t.get(id).is_none(), "{id}");
        }
    }

    #[test]
    fn an_exact_entry_beats_the_bare_name() {
        let t = PriceTable::new()
            .with("gpt-4o", 2.5, 10.0)
            .with("azure/gpt-4o", 5.0, 15.0);
        assert_eq!(t.cost_usd("azure/gpt-4o", Usage::new(1_000_000, 0)), 5.0);
        assert_eq!(t.cost_usd("openai/gpt-4o", Usage::new(1_000_000, 0)), 2.5);
    }
}
