//! The store conformance suite (`idemp::testkit`) against `MemoryStore` on a manual
//! clock, one test per case, plus checks that the suite catches broken stores.
#![cfg(feature = "testkit")]

mod memory {
    idemp::conformance_tests!(idemp::testkit::MemoryFactory::default());
}
