//! Store URLs: never panic; an accepted URL prints (password masked) and parses again
//! to the same kind of store.
#![no_main]

use idemp::store::StoreUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = text.parse::<StoreUrl>() {
        let shown = url.to_string();
        if !shown.contains("***") {
            let again: StoreUrl = shown
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which fails: {e}"));
            assert_eq!(again.scheme(), url.scheme());
        }
    }
});
