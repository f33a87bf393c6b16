//! The canonical JSON writers: never panic, and canonical output is a fixed point
//! (canonicalizing it again gives the same bytes) in both formats.
#![no_main]

use idemp::canon::{Canonicalizer, Format, Preset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Python, Format::Jcs] {
        let canon = Canonicalizer::new(format);
        if let Ok(out) = canon.canonicalize(data) {
            let again = canon
                .canonicalize(out.as_bytes())
                .expect("canonical output must parse");
            assert_eq!(out, again, "not a fixed point");
            // Hashing agrees with hashing the canonical text.
            assert_eq!(canon.hash(data).ok(), canon.hash(out.as_bytes()).ok());
        }
    }
    // Dropping keys never turns invalid input into valid output, or panics.
    let with_preset = Canonicalizer::new(Format::Python).preset(Preset::Anthropic);
    if with_preset.canonicalize(data).is_ok() {
        assert!(Canonicalizer::new(Format::Python).canonicalize(data).is_ok());
    }
});
